-- The RUBiS auction schema for MariaDB, loaded when the debian image is
-- built. InnoDB rather than the reference's MyISAM: the lab checks that
-- acknowledged bids survive a kernel crash, which needs transactions that
-- are on disk when the page answers.
CREATE DATABASE rubis CHARACTER SET utf8mb4;
USE rubis;

CREATE TABLE categories (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  name VARCHAR(50) NOT NULL
) ENGINE=InnoDB;

CREATE TABLE regions (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  name VARCHAR(25) NOT NULL
) ENGINE=InnoDB;

CREATE TABLE users (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  firstname VARCHAR(20),
  lastname VARCHAR(20),
  nickname VARCHAR(20) NOT NULL UNIQUE,
  password VARCHAR(20) NOT NULL,
  email VARCHAR(50) NOT NULL,
  rating INT NOT NULL DEFAULT 0,
  balance DECIMAL(12,2) NOT NULL DEFAULT 0,
  creation_date DATETIME NOT NULL,
  region INT UNSIGNED NOT NULL,
  INDEX auth (nickname, password),
  INDEX region_id (region)
) ENGINE=InnoDB;

CREATE TABLE items (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  description TEXT,
  initial_price DECIMAL(12,2) NOT NULL,
  quantity INT UNSIGNED NOT NULL,
  reserve_price DECIMAL(12,2) NOT NULL DEFAULT 0,
  buy_now DECIMAL(12,2) NOT NULL DEFAULT 0,
  nb_of_bids INT UNSIGNED NOT NULL DEFAULT 0,
  max_bid DECIMAL(12,2) NOT NULL DEFAULT 0,
  start_date DATETIME NOT NULL,
  end_date DATETIME NOT NULL,
  seller INT UNSIGNED NOT NULL,
  category INT UNSIGNED NOT NULL,
  INDEX seller_id (seller),
  INDEX category_id (category)
) ENGINE=InnoDB;

CREATE TABLE old_items LIKE items;

CREATE TABLE bids (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  user_id INT UNSIGNED NOT NULL,
  item_id INT UNSIGNED NOT NULL,
  qty INT UNSIGNED NOT NULL,
  bid DECIMAL(12,2) NOT NULL,
  max_bid DECIMAL(12,2) NOT NULL,
  date DATETIME NOT NULL,
  INDEX item (item_id),
  INDEX user (user_id)
) ENGINE=InnoDB;

CREATE TABLE comments (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  from_user_id INT UNSIGNED NOT NULL,
  to_user_id INT UNSIGNED NOT NULL,
  item_id INT UNSIGNED NOT NULL,
  rating INT NOT NULL,
  date DATETIME NOT NULL,
  comment TEXT,
  INDEX from_user (from_user_id),
  INDEX to_user (to_user_id),
  INDEX item (item_id)
) ENGINE=InnoDB;

CREATE TABLE buy_now (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  buyer_id INT UNSIGNED NOT NULL,
  item_id INT UNSIGNED NOT NULL,
  qty INT UNSIGNED NOT NULL,
  date DATETIME NOT NULL,
  INDEX buyer (buyer_id),
  INDEX item (item_id)
) ENGINE=InnoDB;

CREATE TABLE ids (
  id INT UNSIGNED NOT NULL PRIMARY KEY,
  category INT UNSIGNED NOT NULL,
  region INT UNSIGNED NOT NULL,
  users INT UNSIGNED NOT NULL,
  item INT UNSIGNED NOT NULL,
  comment INT UNSIGNED NOT NULL,
  bid INT UNSIGNED NOT NULL,
  buyNow INT UNSIGNED NOT NULL
) ENGINE=InnoDB;

-- MariaDB's root uses unix-socket authentication: the pages need an
-- account of their own, with no more than row access.
CREATE USER 'rubis'@'localhost' IDENTIFIED BY 'rubis';
GRANT SELECT, INSERT, UPDATE ON rubis.* TO 'rubis'@'localhost';
