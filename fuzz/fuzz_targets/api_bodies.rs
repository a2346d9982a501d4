//! The JSON bodies of the public endpoints through everything their handlers do before the
//! database: the body extractor (`JsonValue`, or `Idempotent` with its key and request hash:
//! content type, JSON, integral floats as integers), the typed request (`typed`, or
//! `PlaceOrderRequest::from_body` with its price-field refusal), then the validation each
//! handler applies to it (reasons, names, workers, a plan or level as added or changed), and
//! the error body of a refusal.
//!
//! The start line is the request line (`POST /v1/orders`), the headers are the request's
//! (`Content-Type: application/json` when none is given), the body is the request body.
#![no_main]

use axum::body::Body;
use axum::extract::FromRequest;
use axum::http::{Method, Request, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use memberline_fuzz::{Input, now};
use memberline_gateway::http::admin::{CreateUser, ReplayRequest, parse_worker, valid_name};
use memberline_gateway::http::admin_actions::{GrantBody, ReasonBody, reason};
use memberline_gateway::http::catalogue::{LevelChange, NewLevel, NewPlan, PlanChange};
use memberline_gateway::http::error::ApiError;
use memberline_gateway::http::idempotency::Idempotent;
use memberline_gateway::http::members::{AdjustmentBody, MemberChange};
use memberline_gateway::http::orders::PlaceOrderRequest;
use memberline_gateway::http::sign_in::{StaffCredentials, WechatCode};
use memberline_gateway::http::{JsonValue, typed};
use memberline_schema::entities::{level, plan};
use memberline_schema::ids::PlanId;
use memberline_schema::states::PlanKind;

/// The body each endpoint takes.
#[derive(Clone, Copy)]
enum Endpoint {
    PlaceOrder,
    Refund,
    Grant,
    Revoke,
    Adjust,
    ChangeMember,
    AddUser,
    ReplayDeadLetters,
    AddPlan,
    ChangePlan,
    AddLevel,
    ChangeLevel,
    WechatSignIn,
    StaffSignIn,
}

/// The routes with a JSON body, as the routers spell them (`{id}`: any one segment).
const ROUTES: [(&str, &str, Endpoint); 15] = [
    ("POST", "/v1/orders", Endpoint::PlaceOrder),
    ("POST", "/v1/admin/orders/{id}/refund", Endpoint::Refund),
    ("PUT", "/v1/admin/users/{id}/membership", Endpoint::Grant),
    (
        "DELETE",
        "/v1/admin/users/{id}/membership",
        Endpoint::Revoke,
    ),
    (
        "POST",
        "/v1/admin/members/{id}/adjustments",
        Endpoint::Adjust,
    ),
    ("PATCH", "/v1/admin/members/{id}", Endpoint::ChangeMember),
    ("POST", "/v1/admin/users", Endpoint::AddUser),
    (
        "POST",
        "/v1/admin/dead-letters/replay",
        Endpoint::ReplayDeadLetters,
    ),
    ("POST", "/v1/admin/plans", Endpoint::AddPlan),
    ("PATCH", "/v1/admin/plans/{id}", Endpoint::ChangePlan),
    ("POST", "/v1/admin/levels", Endpoint::AddLevel),
    ("PATCH", "/v1/admin/levels/{id}", Endpoint::ChangeLevel),
    ("POST", "/v1/auth/wechat", Endpoint::WechatSignIn),
    ("POST", "/v1/me/wechat", Endpoint::WechatSignIn),
    ("POST", "/v1/auth/staff", Endpoint::StaffSignIn),
];

fn endpoint(method: &str, path: &str) -> Option<Endpoint> {
    let matches = |template: &str| {
        let (mut t, mut p) = (template.split('/'), path.split('/'));
        loop {
            match (t.next(), p.next()) {
                (None, None) => return true,
                (Some("{id}"), Some(s)) if !s.is_empty() => {}
                (Some(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
    };
    ROUTES
        .iter()
        .find(|(m, t, _)| *m == method && matches(t))
        .map(|(_, _, e)| *e)
}

/// A plan and a level as the seed makes them: what a change applies to.
fn monthly(at: DateTime<Utc>) -> plan::Model {
    plan::Model {
        id: PlanId(1),
        code: "monthly".to_owned(),
        name: "Monthly".to_owned(),
        kind: PlanKind::Membership,
        duration_days: Some(30),
        uses: None,
        original_price_fen: 3000,
        price_fen: 2500,
        price_points: Some(2500),
        is_free: false,
        on_shelf: true,
        sort: 1,
        image_url: None,
        created_at: at,
        pay_methods: None,
        channels: None,
        archived_at: None,
        updated_at: at,
    }
}

fn silver(at: DateTime<Utc>) -> level::Model {
    level::Model {
        id: 1,
        name: "Silver".to_owned(),
        min_growth: 1000,
        discount_percent: 95,
        points_bonus_percent: 100,
        updated_at: at,
    }
}

/// What the handler of `endpoint` does with the body before its first query.
async fn handle(endpoint: Endpoint, request: Request<Body>) -> Result<(), ApiError> {
    use Endpoint::*;
    let body = match endpoint {
        PlaceOrder | Refund | Grant | Revoke | Adjust => {
            let request = Idempotent::from_request(request, &()).await?;
            let _ = request.key.map(|key| key.len());
            let _ = request.request_hash;
            request.body
        }
        _ => JsonValue::from_request(request, &()).await?.0,
    };
    match endpoint {
        PlaceOrder => {
            let order = PlaceOrderRequest::from_body(body)?;
            let _ = order.pay_method.provider();
        }
        Refund | Revoke => {
            reason(&typed::<ReasonBody>(body)?.reason)?;
        }
        Grant => {
            reason(&typed::<GrantBody>(body)?.reason)?;
        }
        Adjust => {
            reason(&typed::<AdjustmentBody>(body)?.reason)?;
        }
        ChangeMember => {
            if let Some(name) = typed::<MemberChange>(body)?.name {
                let _ = valid_name(&name);
            }
        }
        AddUser => {
            let _ = valid_name(&typed::<CreateUser>(body)?.name);
        }
        ReplayDeadLetters => {
            parse_worker(&typed::<ReplayRequest>(body)?.worker)?;
        }
        AddPlan => {
            typed::<NewPlan>(body)?.plan(now())?;
        }
        ChangePlan => {
            typed::<PlanChange>(body)?.apply(&monthly(now()))?;
        }
        AddLevel => {
            typed::<NewLevel>(body)?.level(now())?;
        }
        ChangeLevel => {
            typed::<LevelChange>(body)?.apply(&silver(now()))?;
        }
        WechatSignIn => {
            typed::<WechatCode>(body)?;
        }
        StaffSignIn => {
            typed::<StaffCredentials>(body)?;
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    let Ok(line) = std::str::from_utf8(input.start) else {
        return;
    };
    let Some((method, path)) = line.split_once(' ') else {
        return;
    };
    let Some(endpoint) = endpoint(method, path) else {
        return;
    };
    let mut headers = input.header_map();
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            "application/json".parse().expect("a value"),
        );
    }
    let mut builder = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("a route's method"))
        .uri(path);
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    let Ok(request) = builder.body(Body::from(input.body.to_vec())) else {
        return;
    };
    if let Err(refusal) = block_on(handle(endpoint, request)) {
        let _ = refusal.into_response();
    }
});
