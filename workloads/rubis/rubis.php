<?php
// The RUBiS auction site for kfi, written from the benchmark's published
// description. Each page file is a two-line stub that calls rubis_serve()
// with its name; the pages themselves are the page_* functions below.
//
// Every correct answer ends with a marker the client checks:
//   <!-- rubis:<Page> ok key=value ... -->
// A page that stores something names the new row in it (id=N, or id=0 when
// the site declined: sold out, auction closed). Output is buffered and
// sent only after the page's transaction committed, so an acknowledged id
// is on disk. Failures answer 4xx/5xx with a `rubis:<Page> fail` or
// `rubis:<Page> error` marker instead.

const RUBIS_PAGE_SIZE = 20;

final class RubisFail extends Exception
{
    public int $status;

    public function __construct(int $status, string $why)
    {
        parent::__construct($why);
        $this->status = $status;
    }
}

function rubis_db(): mysqli
{
    static $db = null;
    if ($db === null) {
        mysqli_report(MYSQLI_REPORT_ERROR | MYSQLI_REPORT_STRICT);
        $db = new mysqli('localhost', 'rubis', 'rubis', 'rubis', 0, getenv('RUBIS_DB_SOCKET') ?: '/run/mysqld/mysqld.sock');
        $db->set_charset('utf8mb4');
    }
    return $db;
}

/** Runs a query with bound parameters; returns its rows (empty for writes). */
function q(string $sql, string $types = '', ...$args): array
{
    $st = rubis_db()->prepare($sql);
    if ($types !== '') {
        $st->bind_param($types, ...$args);
    }
    $st->execute();
    $result = $st->get_result();
    return $result === false ? [] : $result->fetch_all(MYSQLI_ASSOC);
}

/** Runs a write; returns [insert id, affected rows]. */
function w(string $sql, string $types, ...$args): array
{
    $st = rubis_db()->prepare($sql);
    $st->bind_param($types, ...$args);
    $st->execute();
    return [$st->insert_id, $st->affected_rows];
}

function h($s): string
{
    return htmlspecialchars((string) $s, ENT_QUOTES);
}

function arg_str(string $name): string
{
    $v = $_REQUEST[$name] ?? null;
    if (!is_string($v) || $v === '') {
        throw new RubisFail(400, "missing parameter $name");
    }
    return $v;
}

function arg_int(string $name, ?int $default = null): int
{
    $v = $_REQUEST[$name] ?? null;
    if ($v === null && $default !== null) {
        return $default;
    }
    if (!is_string($v) || !preg_match('/^-?[0-9]+$/', $v)) {
        throw new RubisFail(400, "missing or non-integer parameter $name");
    }
    return (int) $v;
}

function arg_money(string $name): string
{
    $v = $_REQUEST[$name] ?? null;
    if (!is_string($v) || !preg_match('/^[0-9]+(\.[0-9]{1,2})?$/', $v)) {
        throw new RubisFail(400, "missing or malformed amount $name");
    }
    return $v;
}

/** The id of the user the request's nickname and password name. */
function auth(): int
{
    $rows = q('SELECT id FROM users WHERE nickname = ? AND password = ?', 'ss', arg_str('nickname'), arg_str('password'));
    if (!$rows) {
        throw new RubisFail(403, 'wrong nickname or password');
    }
    return (int) $rows[0]['id'];
}

/** An item on sale or sold, with `old` saying which. */
function item(int $id): array
{
    foreach (['items' => 0, 'old_items' => 1] as $table => $old) {
        $rows = q("SELECT * FROM $table WHERE id = ?", 'i', $id);
        if ($rows) {
            $rows[0]['old'] = $old;
            return $rows[0];
        }
    }
    throw new RubisFail(404, "no item $id");
}

function user(int $id): array
{
    $rows = q('SELECT * FROM users WHERE id = ?', 'i', $id);
    if (!$rows) {
        throw new RubisFail(404, "no user $id");
    }
    return $rows[0];
}

function login_form(string $action, array $hidden): void
{
    echo "<form action=\"$action.php\" method=\"get\">\n";
    foreach ($hidden as $k => $v) {
        echo '<input type="hidden" name="', h($k), '" value="', h($v), "\">\n";
    }
    echo "Nickname <input name=\"nickname\"> Password <input type=\"password\" name=\"password\">\n";
    echo "<input type=\"submit\" value=\"Log in\"></form>\n";
}

function item_list(array $rows): void
{
    echo "<table>\n<tr><th>Item</th><th>Price</th><th>Bids</th><th>Ends</th></tr>\n";
    foreach ($rows as $r) {
        $price = $r['max_bid'] > 0 ? $r['max_bid'] : $r['initial_price'];
        echo '<tr><td><a href="ViewItem.php?itemId=', $r['id'], '">', h($r['name']), '</a></td><td>', h($price),
            '</td><td>', $r['nb_of_bids'], '</td><td>', h($r['end_date']), "</td></tr>\n";
    }
    echo "</table>\n";
}

function rubis_serve(string $page): void
{
    ob_start();
    try {
        $attrs = ('page_' . $page)() ?? [];
        $body = ob_get_clean();
        $marker = '';
        foreach ($attrs as $k => $v) {
            $marker .= " $k=$v";
        }
        header('Content-Type: text/html; charset=utf-8');
        echo "<!doctype html>\n<html><head><title>RUBiS: $page</title></head><body>\n<h1>RUBiS: $page</h1>\n",
            $body, "<!-- rubis:$page ok$marker -->\n</body></html>\n";
    } catch (RubisFail $e) {
        ob_end_clean();
        http_response_code($e->status);
        echo "<!-- rubis:$page fail status={$e->status} -->\n", h($e->getMessage()), "\n";
    } catch (Throwable $e) {
        ob_end_clean();
        // The database down or refusing: the service is not working.
        http_response_code(503);
        error_log("rubis $page: " . $e->getMessage());
        echo "<!-- rubis:$page error -->\n", h(get_class($e) . ': ' . $e->getMessage()), "\n";
    }
}

function page_Home(): array
{
    echo "<p>Welcome to RUBiS, the auction site.</p>\n<ul>\n",
        "<li><a href=\"Browse.php\">Browse</a></li>\n",
        "<li><a href=\"Sell.php\">Sell</a></li>\n",
        "<li><a href=\"AboutMeAuth.php\">About me</a></li>\n",
        "<li><a href=\"Register.php\">Register</a></li>\n</ul>\n";
    return [];
}

function page_Register(): array
{
    echo "<form action=\"RegisterUser.php\" method=\"get\">\n";
    foreach (['firstname', 'lastname', 'nickname', 'email', 'password'] as $f) {
        echo "$f <input name=\"$f\"><br>\n";
    }
    echo "region <input name=\"region\"><br>\n<input type=\"submit\" value=\"Register\"></form>\n";
    return [];
}

function page_RegisterUser(): array
{
    $region = arg_int('region');
    if (!q('SELECT id FROM regions WHERE id = ?', 'i', $region)) {
        throw new RubisFail(404, "no region $region");
    }
    try {
        [$id] = w(
            'INSERT INTO users (firstname, lastname, nickname, password, email, rating, balance, creation_date, region) '
                . 'VALUES (?, ?, ?, ?, ?, 0, 0, NOW(), ?)',
            'sssssi',
            arg_str('firstname'),
            arg_str('lastname'),
            arg_str('nickname'),
            arg_str('password'),
            arg_str('email'),
            $region
        );
    } catch (mysqli_sql_exception $e) {
        if ($e->getCode() === 1062) {
            throw new RubisFail(409, 'nickname already taken');
        }
        throw $e;
    }
    echo '<p>Welcome, ', h(arg_str('nickname')), ". Your user id is $id.</p>\n";
    return ['id' => $id];
}

function page_Browse(): array
{
    echo "<ul><li><a href=\"BrowseCategories.php\">Browse by category</a></li>\n",
        "<li><a href=\"BrowseRegions.php\">Browse by region</a></li></ul>\n";
    return [];
}

function page_BrowseCategories(): array
{
    $rows = q('SELECT id, name FROM categories ORDER BY id');
    echo "<ul>\n";
    foreach ($rows as $c) {
        echo '<li><a href="SearchItemsInCategory.php?category=', $c['id'], '">', h($c['name']), "</a></li>\n";
    }
    echo "</ul>\n";
    return ['categories' => count($rows)];
}

function page_SearchItemsInCategory(): array
{
    $category = arg_int('category');
    $page = max(0, arg_int('page', 0));
    $n = RUBIS_PAGE_SIZE;
    $rows = q(
        'SELECT id, name, initial_price, max_bid, nb_of_bids, end_date FROM items WHERE category = ? '
            . 'ORDER BY end_date, id LIMIT ? OFFSET ?',
        'iii',
        $category,
        $n,
        $page * $n
    );
    item_list($rows);
    if (count($rows) === $n) {
        echo '<a href="SearchItemsInCategory.php?category=', $category, '&page=', $page + 1, "\">Next page</a>\n";
    }
    return ['category' => $category, 'page' => $page, 'items' => count($rows)];
}

function page_BrowseRegions(): array
{
    $rows = q('SELECT id, name FROM regions ORDER BY id');
    echo "<ul>\n";
    foreach ($rows as $r) {
        echo '<li><a href="BrowseCategoriesInRegion.php?region=', $r['id'], '">', h($r['name']), "</a></li>\n";
    }
    echo "</ul>\n";
    return ['regions' => count($rows)];
}

function page_BrowseCategoriesInRegion(): array
{
    $region = arg_int('region');
    if (!q('SELECT id FROM regions WHERE id = ?', 'i', $region)) {
        throw new RubisFail(404, "no region $region");
    }
    echo "<ul>\n";
    foreach (q('SELECT id, name FROM categories ORDER BY id') as $c) {
        echo '<li><a href="SearchItemsInRegion.php?category=', $c['id'], '&region=', $region, '">', h($c['name']),
            "</a></li>\n";
    }
    echo "</ul>\n";
    return ['region' => $region];
}

function page_SearchItemsInRegion(): array
{
    $category = arg_int('category');
    $region = arg_int('region');
    $page = max(0, arg_int('page', 0));
    $n = RUBIS_PAGE_SIZE;
    $rows = q(
        'SELECT i.id, i.name, i.initial_price, i.max_bid, i.nb_of_bids, i.end_date FROM items i '
            . 'JOIN users u ON u.id = i.seller WHERE u.region = ? AND i.category = ? '
            . 'ORDER BY i.end_date, i.id LIMIT ? OFFSET ?',
        'iiii',
        $region,
        $category,
        $n,
        $page * $n
    );
    item_list($rows);
    if (count($rows) === $n) {
        echo '<a href="SearchItemsInRegion.php?category=', $category, '&region=', $region, '&page=', $page + 1,
            "\">Next page</a>\n";
    }
    return ['category' => $category, 'region' => $region, 'page' => $page, 'items' => count($rows)];
}

function page_ViewItem(): array
{
    $id = arg_int('itemId');
    $item = item($id);
    $seller = user((int) $item['seller']);
    echo '<h2>', h($item['name']), "</h2>\n<p>", h($item['description']), "</p>\n<ul>\n",
        '<li>Price: ', h($item['max_bid'] > 0 ? $item['max_bid'] : $item['initial_price']), "</li>\n",
        '<li>Bids: ', $item['nb_of_bids'], ' (<a href="ViewBidHistory.php?itemId=', $id, "\">history</a>)</li>\n",
        '<li>Quantity: ', $item['quantity'], "</li>\n",
        '<li>Ends: ', h($item['end_date']), "</li>\n",
        '<li>Seller: <a href="ViewUserInfo.php?userId=', $seller['id'], '">', h($seller['nickname']), "</a></li>\n</ul>\n";
    if (!$item['old']) {
        echo '<a href="PutBidAuth.php?itemId=', $id, "\">Bid</a>\n";
        if ($item['buy_now'] > 0) {
            echo '<a href="BuyNowAuth.php?itemId=', $id, '">Buy now for ', h($item['buy_now']), "</a>\n";
        }
    }
    echo '<a href="PutCommentAuth.php?to=', $seller['id'], '&itemId=', $id, "\">Comment on the seller</a>\n";
    return ['itemId' => $id, 'seller' => $seller['id'], 'old' => $item['old']];
}

function page_ViewUserInfo(): array
{
    $id = arg_int('userId');
    $u = user($id);
    echo '<h2>', h($u['nickname']), "</h2>\n<ul><li>Name: ", h($u['firstname'] . ' ' . $u['lastname']), "</li>\n",
        '<li>Member since: ', h($u['creation_date']), "</li>\n<li>Rating: ", $u['rating'], "</li></ul>\n<ol>\n";
    $rows = q(
        'SELECT c.id, c.rating, c.date, c.comment, c.from_user_id, u.nickname FROM comments c '
            . 'JOIN users u ON u.id = c.from_user_id WHERE c.to_user_id = ? ORDER BY c.id',
        'i',
        $id
    );
    foreach ($rows as $c) {
        echo '<li id="comment-', $c['id'], '"><a href="ViewUserInfo.php?userId=', $c['from_user_id'], '">',
            h($c['nickname']), '</a> (', $c['rating'], ', ', h($c['date']), '): ', h($c['comment']), "</li>\n";
    }
    echo "</ol>\n";
    return ['userId' => $id, 'comments' => count($rows)];
}

function page_ViewBidHistory(): array
{
    $id = arg_int('itemId');
    $item = item($id);
    echo '<h2>Bids on <a href="ViewItem.php?itemId=', $id, '">', h($item['name']), "</a></h2>\n<ol>\n";
    $rows = q(
        'SELECT b.id, b.bid, b.qty, b.date, b.user_id, u.nickname FROM bids b JOIN users u ON u.id = b.user_id '
            . 'WHERE b.item_id = ? ORDER BY b.bid DESC, b.id',
        'i',
        $id
    );
    foreach ($rows as $b) {
        echo '<li id="bid-', $b['id'], '">', h($b['bid']), ' x', $b['qty'], ' by <a href="ViewUserInfo.php?userId=',
            $b['user_id'], '">', h($b['nickname']), '</a> at ', h($b['date']), "</li>\n";
    }
    echo "</ol>\n";
    return ['itemId' => $id, 'bids' => count($rows)];
}

function page_BuyNowAuth(): array
{
    $id = arg_int('itemId');
    login_form('BuyNow', ['itemId' => $id]);
    return ['itemId' => $id];
}

function page_BuyNow(): array
{
    $user = auth();
    $id = arg_int('itemId');
    $item = item($id);
    $left = $item['old'] ? 0 : (int) $item['quantity'];
    echo '<h2>Buy ', h($item['name']), ' now for ', h($item['buy_now']), "</h2>\n",
        "<form action=\"StoreBuyNow.php\" method=\"get\">\n",
        "<input type=\"hidden\" name=\"itemId\" value=\"$id\"><input type=\"hidden\" name=\"userId\" value=\"$user\">\n",
        "Quantity (at most $left) <input name=\"qty\" value=\"1\"><input type=\"submit\" value=\"Buy\"></form>\n";
    return ['itemId' => $id, 'userId' => $user, 'left' => $left];
}

function page_StoreBuyNow(): array
{
    $id = arg_int('itemId');
    $buyer = arg_int('userId');
    $qty = arg_int('qty');
    if ($qty < 1) {
        throw new RubisFail(400, 'quantity must be at least 1');
    }
    user($buyer);
    $db = rubis_db();
    $db->begin_transaction();
    $rows = q('SELECT quantity FROM items WHERE id = ? FOR UPDATE', 'i', $id);
    if (!$rows || (int) $rows[0]['quantity'] < $qty) {
        $db->rollback();
        echo "<p>Not enough left to buy $qty of item $id.</p>\n";
        return ['id' => 0, 'itemId' => $id];
    }
    [$bought] = w('INSERT INTO buy_now (buyer_id, item_id, qty, date) VALUES (?, ?, ?, NOW())', 'iii', $buyer, $id, $qty);
    w(
        'UPDATE items SET quantity = quantity - ?, end_date = IF(quantity = 0, NOW(), end_date) WHERE id = ?',
        'ii',
        $qty,
        $id
    );
    $db->commit();
    echo "<p>You bought $qty of item $id (purchase $bought).</p>\n";
    return ['id' => $bought, 'itemId' => $id];
}

function page_PutBidAuth(): array
{
    $id = arg_int('itemId');
    login_form('PutBid', ['itemId' => $id]);
    return ['itemId' => $id];
}

function page_PutBid(): array
{
    $user = auth();
    $id = arg_int('itemId');
    $item = item($id);
    $min = $item['max_bid'] > 0 ? cents_str(to_cents($item['max_bid']) + 100) : $item['initial_price'];
    echo '<h2>Bid on ', h($item['name']), "</h2>\n<p>Least bid: $min</p>\n",
        "<form action=\"StoreBid.php\" method=\"get\">\n",
        "<input type=\"hidden\" name=\"itemId\" value=\"$id\"><input type=\"hidden\" name=\"userId\" value=\"$user\">\n",
        "<input type=\"hidden\" name=\"minBid\" value=\"$min\">\n",
        "Bid <input name=\"bid\"> Most <input name=\"maxBid\"> Quantity <input name=\"qty\" value=\"1\">\n",
        "<input type=\"submit\" value=\"Bid\"></form>\n";
    return ['itemId' => $id, 'userId' => $user, 'minBid' => $min, 'old' => $item['old']];
}

function to_cents(string $amount): int
{
    [$units, $frac] = array_pad(explode('.', $amount), 2, '0');
    return (int) $units * 100 + (int) str_pad(substr($frac, 0, 2), 2, '0');
}

/** Cents as a decimal string: amounts never pass through floats. */
function cents_str(int $cents): string
{
    return sprintf('%d.%02d', intdiv($cents, 100), $cents % 100);
}

function page_StoreBid(): array
{
    $id = arg_int('itemId');
    $user = arg_int('userId');
    $min = arg_money('minBid');
    $bid = arg_money('bid');
    $max = arg_money('maxBid');
    $qty = arg_int('qty');
    if (to_cents($bid) < to_cents($min) || to_cents($max) < to_cents($bid) || $qty < 1) {
        throw new RubisFail(400, "a bid needs minBid <= bid <= maxBid and a quantity of at least 1");
    }
    user($user);
    $db = rubis_db();
    $db->begin_transaction();
    if (!q('SELECT id FROM items WHERE id = ? FOR UPDATE', 'i', $id)) {
        $db->rollback();
        echo "<p>The auction of item $id is closed.</p>\n";
        return ['id' => 0, 'itemId' => $id];
    }
    [$stored] = w(
        'INSERT INTO bids (user_id, item_id, qty, bid, max_bid, date) VALUES (?, ?, ?, ?, ?, NOW())',
        'iiiss',
        $user,
        $id,
        $qty,
        $bid,
        $max
    );
    w('UPDATE items SET nb_of_bids = nb_of_bids + 1, max_bid = GREATEST(max_bid, ?) WHERE id = ?', 'si', $bid, $id);
    $db->commit();
    echo "<p>Your bid of $bid on item $id is stored (bid $stored).</p>\n";
    return ['id' => $stored, 'itemId' => $id];
}

function page_PutCommentAuth(): array
{
    $to = arg_int('to');
    $id = arg_int('itemId');
    login_form('PutComment', ['to' => $to, 'itemId' => $id]);
    return ['to' => $to, 'itemId' => $id];
}

function page_PutComment(): array
{
    $from = auth();
    $to = arg_int('to');
    $id = arg_int('itemId');
    $about = user($to);
    $item = item($id);
    echo '<h2>Comment on ', h($about['nickname']), ' about ', h($item['name']), "</h2>\n",
        "<form action=\"StoreComment.php\" method=\"get\">\n",
        "<input type=\"hidden\" name=\"to\" value=\"$to\"><input type=\"hidden\" name=\"from\" value=\"$from\">\n",
        "<input type=\"hidden\" name=\"itemId\" value=\"$id\">\n",
        "Rating (-5 to 5) <input name=\"rating\"> <textarea name=\"comment\"></textarea>\n",
        "<input type=\"submit\" value=\"Comment\"></form>\n";
    return ['from' => $from, 'to' => $to, 'itemId' => $id];
}

function page_StoreComment(): array
{
    $to = arg_int('to');
    $from = arg_int('from');
    $id = arg_int('itemId');
    $rating = arg_int('rating');
    $text = arg_str('comment');
    if ($rating < -5 || $rating > 5) {
        throw new RubisFail(400, 'a rating is between -5 and 5');
    }
    user($from);
    item($id);
    $db = rubis_db();
    $db->begin_transaction();
    [, $rated] = w('UPDATE users SET rating = rating + ? WHERE id = ?', 'ii', $rating, $to);
    if ($rated !== 1) {
        $db->rollback();
        throw new RubisFail(404, "no user $to");
    }
    [$stored] = w(
        'INSERT INTO comments (from_user_id, to_user_id, item_id, rating, date, comment) VALUES (?, ?, ?, ?, NOW(), ?)',
        'iiiis',
        $from,
        $to,
        $id,
        $rating,
        $text
    );
    $db->commit();
    echo "<p>Your comment on user $to is stored (comment $stored).</p>\n";
    return ['id' => $stored, 'to' => $to];
}

function page_Sell(): array
{
    login_form('SelectCategoryToSellItem', []);
    return [];
}

function page_SelectCategoryToSellItem(): array
{
    $user = auth();
    echo "<ul>\n";
    foreach (q('SELECT id, name FROM categories ORDER BY id') as $c) {
        echo '<li><a href="SellItemForm.php?category=', $c['id'], '&user=', $user, '">', h($c['name']), "</a></li>\n";
    }
    echo "</ul>\n";
    return ['userId' => $user];
}

function page_SellItemForm(): array
{
    $category = arg_int('category');
    $user = arg_int('user');
    echo "<form action=\"RegisterItem.php\" method=\"get\">\n",
        "<input type=\"hidden\" name=\"categoryId\" value=\"$category\"><input type=\"hidden\" name=\"userId\" value=\"$user\">\n";
    foreach (['name', 'description', 'initialPrice', 'reservePrice', 'buyNow', 'duration', 'quantity'] as $f) {
        echo "$f <input name=\"$f\"><br>\n";
    }
    echo "<input type=\"submit\" value=\"Sell\"></form>\n";
    return ['category' => $category, 'userId' => $user];
}

function page_RegisterItem(): array
{
    $user = arg_int('userId');
    $category = arg_int('categoryId');
    $duration = arg_int('duration');
    $quantity = arg_int('quantity');
    if ($duration < 1 || $quantity < 1) {
        throw new RubisFail(400, 'duration and quantity must be at least 1');
    }
    user($user);
    if (!q('SELECT id FROM categories WHERE id = ?', 'i', $category)) {
        throw new RubisFail(404, "no category $category");
    }
    [$id] = w(
        'INSERT INTO items (name, description, initial_price, quantity, reserve_price, buy_now, nb_of_bids, max_bid, '
            . 'start_date, end_date, seller, category) '
            . 'VALUES (?, ?, ?, ?, ?, ?, 0, 0, NOW(), NOW() + INTERVAL ? DAY, ?, ?)',
        'sssissiii',
        arg_str('name'),
        arg_str('description'),
        arg_money('initialPrice'),
        $quantity,
        arg_money('reservePrice'),
        arg_money('buyNow'),
        $duration,
        $user,
        $category
    );
    echo "<p>Your item is on sale as item <a href=\"ViewItem.php?itemId=$id\">$id</a>.</p>\n";
    return ['id' => $id];
}

function page_AboutMeAuth(): array
{
    login_form('AboutMe', []);
    return [];
}

function page_AboutMe(): array
{
    $user = auth();
    $u = user($user);
    echo '<h2>', h($u['nickname']), "</h2>\n<p>Rating ", $u['rating'], ', balance ', h($u['balance']), "</p>\n";
    echo "<h3>Selling</h3>\n";
    item_list(q(
        'SELECT id, name, initial_price, max_bid, nb_of_bids, end_date FROM items WHERE seller = ? ORDER BY id DESC LIMIT 20',
        'i',
        $user
    ));
    echo "<h3>Bids</h3>\n<ol>\n";
    foreach (q('SELECT id, item_id, bid FROM bids WHERE user_id = ? ORDER BY id DESC LIMIT 20', 'i', $user) as $b) {
        echo '<li>', h($b['bid']), ' on <a href="ViewItem.php?itemId=', $b['item_id'], '">item ', $b['item_id'],
            "</a></li>\n";
    }
    echo "</ol>\n<h3>Bought</h3>\n<ol>\n";
    $bought = q('SELECT id, item_id, qty, date FROM buy_now WHERE buyer_id = ? ORDER BY id', 'i', $user);
    foreach ($bought as $b) {
        echo '<li id="buynow-', $b['id'], '">', $b['qty'], ' of <a href="ViewItem.php?itemId=', $b['item_id'],
            '">item ', $b['item_id'], '</a> at ', h($b['date']), "</li>\n";
    }
    echo "</ol>\n<h3>Comments about you</h3>\n<ol>\n";
    foreach (q('SELECT id, rating, comment FROM comments WHERE to_user_id = ? ORDER BY id DESC LIMIT 20', 'i', $user) as $c) {
        echo '<li>', $c['rating'], ': ', h($c['comment']), "</li>\n";
    }
    echo "</ol>\n";
    return ['userId' => $user, 'bought' => count($bought)];
}
