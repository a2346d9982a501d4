//! Live push suite: the merchant console's WebSocket against the real gateway, broker and
//! database — refusals before the upgrade, resume with no gap and no duplicate, a second gateway
//! instance, a slow console closed and resumed, buyers' reminders.

mod buyer;
mod cli;
mod merchant;
