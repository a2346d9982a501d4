//! The order domain's SQL: each module is the statements of one concern, called inside the
//! transaction its caller opened.

pub mod audit;
pub mod catalogue;
pub mod notifications;
pub mod orders;
pub mod payment_checks;
pub(crate) mod purchase;
pub mod refunds;
pub mod transitions;
