//! The auction site's pages: the 27 states of the RUBiS transition table
//! (26 interactions, with the "About me" login form and page counted
//! apart, as the published tables do).
//!
//! The `debian` guest gets one PHP page per state, named here
//! (`super::guest_site`); the image's recipe hashes those pages.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One page of the auction site, in the order of the published tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Interaction {
    /// The home page.
    Home,
    /// The form to register a new user.
    Register,
    /// Stores a new user (write).
    RegisterUser,
    /// Choice between browsing by category or by region.
    Browse,
    /// Every category.
    BrowseCategories,
    /// One page of the items of a category.
    SearchItemsInCategory,
    /// Every region.
    BrowseRegions,
    /// Every category, for one region.
    BrowseCategoriesInRegion,
    /// One page of the items of a category sold by users of a region.
    SearchItemsInRegion,
    /// One item, with its current price and links to act on it.
    ViewItem,
    /// A user and the comments about them.
    ViewUserInfo,
    /// Every bid on an item.
    ViewBidHistory,
    /// Login form before buying an item outright.
    BuyNowAuth,
    /// Checks the login and shows the buy-now form.
    BuyNow,
    /// Stores a buy-now purchase (write).
    StoreBuyNow,
    /// Login form before bidding.
    PutBidAuth,
    /// Checks the login and shows the bid form with the least bid.
    PutBid,
    /// Stores a bid (write).
    StoreBid,
    /// Login form before commenting on a user.
    PutCommentAuth,
    /// Checks the login and shows the comment form.
    PutComment,
    /// Stores a comment (write).
    StoreComment,
    /// Login form before selling.
    Sell,
    /// Checks the login and lists the categories to sell in.
    SelectCategoryToSellItem,
    /// The form describing a new item.
    SellItemForm,
    /// Stores a new item (write).
    RegisterItem,
    /// Login form before the user's own summary.
    AboutMeAuth,
    /// The user's bids, sales, purchases and comments.
    AboutMe,
}

impl Interaction {
    /// Every state, in table order.
    pub const ALL: [Interaction; 27] = [
        Interaction::Home,
        Interaction::Register,
        Interaction::RegisterUser,
        Interaction::Browse,
        Interaction::BrowseCategories,
        Interaction::SearchItemsInCategory,
        Interaction::BrowseRegions,
        Interaction::BrowseCategoriesInRegion,
        Interaction::SearchItemsInRegion,
        Interaction::ViewItem,
        Interaction::ViewUserInfo,
        Interaction::ViewBidHistory,
        Interaction::BuyNowAuth,
        Interaction::BuyNow,
        Interaction::StoreBuyNow,
        Interaction::PutBidAuth,
        Interaction::PutBid,
        Interaction::StoreBid,
        Interaction::PutCommentAuth,
        Interaction::PutComment,
        Interaction::StoreComment,
        Interaction::Sell,
        Interaction::SelectCategoryToSellItem,
        Interaction::SellItemForm,
        Interaction::RegisterItem,
        Interaction::AboutMeAuth,
        Interaction::AboutMe,
    ];

    /// Whether the page reads or writes the database. The others (the home
    /// page, menus, login forms and the empty forms) are what Apache and
    /// PHP answer alone: a correct one says nothing about the auction
    /// site's data, so client-seen downtime leaves them out
    /// ([`needs_database`]).
    pub fn needs_database(self) -> bool {
        !matches!(
            self,
            Interaction::Home
                | Interaction::Register
                | Interaction::Browse
                | Interaction::BuyNowAuth
                | Interaction::PutBidAuth
                | Interaction::PutCommentAuth
                | Interaction::Sell
                | Interaction::SellItemForm
                | Interaction::AboutMeAuth
        )
    }

    /// The page a request path names (`/rubis/ViewItem.php?itemId=3`).
    pub fn of_path(path: &str) -> Option<Interaction> {
        let file = path.split('?').next()?.rsplit('/').next()?;
        file.strip_suffix(".php")?.parse().ok()
    }

    /// Position in table order.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name used in the transition tables, the page file and the
    /// page's marker.
    pub fn name(self) -> &'static str {
        match self {
            Interaction::Home => "Home",
            Interaction::Register => "Register",
            Interaction::RegisterUser => "RegisterUser",
            Interaction::Browse => "Browse",
            Interaction::BrowseCategories => "BrowseCategories",
            Interaction::SearchItemsInCategory => "SearchItemsInCategory",
            Interaction::BrowseRegions => "BrowseRegions",
            Interaction::BrowseCategoriesInRegion => "BrowseCategoriesInRegion",
            Interaction::SearchItemsInRegion => "SearchItemsInRegion",
            Interaction::ViewItem => "ViewItem",
            Interaction::ViewUserInfo => "ViewUserInfo",
            Interaction::ViewBidHistory => "ViewBidHistory",
            Interaction::BuyNowAuth => "BuyNowAuth",
            Interaction::BuyNow => "BuyNow",
            Interaction::StoreBuyNow => "StoreBuyNow",
            Interaction::PutBidAuth => "PutBidAuth",
            Interaction::PutBid => "PutBid",
            Interaction::StoreBid => "StoreBid",
            Interaction::PutCommentAuth => "PutCommentAuth",
            Interaction::PutComment => "PutComment",
            Interaction::StoreComment => "StoreComment",
            Interaction::Sell => "Sell",
            Interaction::SelectCategoryToSellItem => "SelectCategoryToSellItem",
            Interaction::SellItemForm => "SellItemForm",
            Interaction::RegisterItem => "RegisterItem",
            Interaction::AboutMeAuth => "AboutMeAuth",
            Interaction::AboutMe => "AboutMe",
        }
    }

    /// The page's URL path on the guest.
    pub fn path(self) -> String {
        format!("{}{}.php", super::SITE_PREFIX, self.name())
    }

    /// Whether the interaction writes to the database.
    pub fn writes(self) -> bool {
        matches!(
            self,
            Interaction::RegisterUser
                | Interaction::StoreBuyNow
                | Interaction::StoreBid
                | Interaction::StoreComment
                | Interaction::RegisterItem
        )
    }

    /// The interaction a recorded request path (with or without a query)
    /// belongs to.
    pub fn from_path(path: &str) -> Option<Interaction> {
        let file = path.split('?').next()?.strip_prefix(super::SITE_PREFIX)?;
        file.strip_suffix(".php")?.parse().ok()
    }
}

impl fmt::Display for Interaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no interaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a RUBiS interaction; the 27 states are Home, Register, RegisterUser, Browse, ..., AboutMeAuth, AboutMe")]
pub struct UnknownInteraction(pub String);

impl FromStr for Interaction {
    type Err = UnknownInteraction;
    fn from_str(s: &str) -> Result<Self, UnknownInteraction> {
        Interaction::ALL.into_iter().find(|i| i.name() == s).ok_or_else(|| UnknownInteraction(s.to_string()))
    }
}

/// Whether a request of the RUBiS workload needs the database: its page
/// does ([`Interaction::needs_database`]); a path that names no page
/// counts as needing it (nothing is left out on a guess).
pub fn needs_database(path: &str) -> bool {
    Interaction::of_path(path).is_none_or(Interaction::needs_database)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_indices_round_trip() {
        for (k, i) in Interaction::ALL.into_iter().enumerate() {
            assert_eq!(i.index(), k);
            assert_eq!(i.name().parse::<Interaction>(), Ok(i));
            assert_eq!(Interaction::from_path(&i.path()), Some(i));
            assert_eq!(Interaction::from_path(&format!("{}?itemId=3&x=y", i.path())), Some(i));
        }
        assert_eq!(Interaction::from_path("/index.html"), None);
        assert!("Nope".parse::<Interaction>().is_err());
        assert_eq!(Interaction::ALL.iter().filter(|i| i.writes()).count(), 5);
    }
}
