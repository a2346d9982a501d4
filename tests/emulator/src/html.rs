//! The little HTML the emulator serves to a person's browser (the scan page, WeChat's H5
//! cashier, Alipay's wap and page cashiers): one self-contained page shape with inline styles
//! and no external assets, so that it works offline.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A whole page around `content` (HTML, already escaped where needed).
pub fn page(title: &str, content: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;color:#222}}\
table{{border-collapse:collapse;width:100%}}td,th{{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #ddd}}\
button{{font-size:1.1rem;padding:.6rem 2rem;margin-top:1rem;border:0;border-radius:.4rem;background:#07c160;color:#fff;cursor:pointer}}\
.alipay button{{background:#1677ff}}.note{{color:#666;font-size:.9rem}}.err{{color:#b00020}}.ok{{color:#07843f}}</style>\
</head><body>{}</body></html>",
        escape(title),
        content
    )
}

/// A page with a heading and one paragraph of plain text.
pub fn message(status: StatusCode, title: &str, class: &str, text: &str) -> Response {
    let body = format!(
        "<h1 class=\"{class}\">{}</h1><p>{}</p>",
        escape(title),
        escape(text)
    );
    (status, Html(page(title, &body))).into_response()
}

/// One value percent-encoded as in a form or a query string.
pub fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("x", s)])
        .map(|e| e[2..].to_string())
        .unwrap_or_default()
}

/// An absolute http(s) URL a browser may be sent to (nothing a link could run as script).
pub fn is_web_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}
