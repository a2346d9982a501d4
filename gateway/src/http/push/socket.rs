//! What every push socket shares: its buffer sizes and the close codes it ends with.

use axum::extract::ws::WebSocketUpgrade;

/// Close code for a client that let its queue fill.
pub const TOO_SLOW: u16 = 4008;
/// Close code for a client that stopped answering pings.
pub const IDLE: u16 = 4000;

/// A console or order stream carries small JSON messages out, and in only pongs, closes and
/// the occasional small message: a socket keeps an 8 KiB read buffer (the library's default is
/// 128 KiB), so that 10,000 open consoles fit in memory. A client message over 64 KiB is a
/// protocol error that drops the connection (the client reconnects and resumes).
pub fn sized(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(64 * 1024)
        .max_frame_size(64 * 1024)
}
