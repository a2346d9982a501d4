//! Payments suite: WeChat Pay and Alipay QR checkout, verified notifications and their replies,
//! expiry, cancel, reconciliation and late-payment refunds,
//! against the provider emulator (a separate process speaking the providers' wire protocols),
//! real PostgreSQL and RabbitMQ.

mod checkout;
mod lifecycle;
mod notifications;
