//! The merchant's back office against the real gateway, workers, broker and database: the
//! catalogue edited and audited, members found and adjusted, CSV exports, and the dashboard's
//! rollups kept from the events and rebuilt from the orders.

mod catalogue;
mod exports;
mod members;
mod stats;
