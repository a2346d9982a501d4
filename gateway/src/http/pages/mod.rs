//! The two web pages the gateway serves, `/vip` (the buyer's) and `/console` (the merchant's),
//! with their scripts and style. Everything is compiled into the binary: the pages load
//! nothing from outside the gateway and work offline, and a strict Content-Security-Policy says
//! so to the browser.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::http::error::ApiError;
use crate::state::AppState;

/// Only the gateway itself: scripts, styles, API calls and WebSockets (`'self'` covers `ws:` of
/// the same host), and QR images fetched with the buyer's token (`blob:`).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// `(name, content type, body)` of every asset under `/assets/`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/common.js"),
    ),
    (
        "vip.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/vip.js"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    ),
    (
        "backoffice.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/backoffice.js"),
    ),
    // Chart.js 4.6.2 (MIT, bundling @kurkle/color, MIT; licenses beside it), copied unchanged
    // from npm by vendor/refresh.sh (`make vendor`). Defines the global `Chart`.
    (
        "chart.umd.min.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/chart.umd.min.js"),
    ),
];

fn respond(content_type: &'static str, body: &'static str) -> Response {
    let mut res = body.into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Small and compiled in: revalidated each time, so a new release is seen at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

/// The buyer's page: membership, plans, checkout with a live payment status, recent orders.
pub async fn vip() -> Response {
    respond("text/html; charset=utf-8", include_str!("assets/vip.html"))
}

/// The merchant's console: the live feed of paid orders and reminders, and recent orders.
pub async fn console() -> Response {
    respond(
        "text/html; charset=utf-8",
        include_str!("assets/console.html"),
    )
}

async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, content_type, body)| respond(content_type, body))
        .ok_or_else(|| ApiError::not_found("asset_not_found", "no such asset"))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/vip", get(vip))
        .route("/console", get(console))
        .route("/assets/{name}", get(asset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_and_style_a_page_names_is_served() {
        for page in [
            include_str!("assets/vip.html"),
            include_str!("assets/console.html"),
        ] {
            for part in page.split("/assets/").skip(1) {
                let name = part.split('"').next().unwrap();
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == name),
                    "/assets/{name} is named by a page but not served"
                );
            }
        }
    }

    #[test]
    fn pages_load_nothing_from_another_origin() {
        let mut texts = vec![
            include_str!("assets/vip.html"),
            include_str!("assets/console.html"),
        ];
        texts.extend(ASSETS.iter().map(|(_, _, body)| *body));
        for text in texts {
            // A vendored script's license banners (`/*! … */`) name their project's web site,
            // which loads nothing: only the code around them counts.
            let code = without_license_banners(text);
            assert!(
                !code.contains("http://") && !code.contains("https://"),
                "{}",
                &text[..80]
            );
        }
    }

    fn without_license_banners(text: &str) -> String {
        let mut code = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("/*!") {
            code.push_str(&rest[..start]);
            rest = rest[start..]
                .split_once("*/")
                .map_or("", |(_, after)| after);
        }
        code.push_str(rest);
        code
    }
}
