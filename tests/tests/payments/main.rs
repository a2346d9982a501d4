//! Payments suite: WeChat Pay and Alipay checkout by every channel, WeChat sign-in, verified
//! notifications and their replies, Alipay's cashier return, expiry, cancel, reconciliation,
//! late-payment refunds and the eligibility check when a payment arrives,
//! against the provider emulator (a separate process speaking the providers' wire protocols),
//! real PostgreSQL and RabbitMQ.

mod channels;
mod checkout;
mod eligibility;
mod lifecycle;
mod notifications;
mod returns;
mod sign_in;
