//! The order domain's SQL: each module is the statements of one concern, called inside the
//! transaction its caller opened.

pub mod audit;
pub(crate) mod purchase;
