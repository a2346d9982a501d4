//! Query-string validation shared by every list endpoint: one extractor whose rejection is 400
//! `invalid_query` naming the parameter, and one page-size check.

use crate::http::error::ApiError;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// A query string deserialized into `T`; an unknown value or a wrong type is 400
/// `invalid_query` with serde's explanation.
pub struct ValidQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ValidQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ValidQuery(q))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// A page size: `default` when absent, otherwise 1..=`max`, else 400 `invalid_query`.
pub fn limit(requested: Option<u64>, default: u64, max: u64) -> Result<u64, ApiError> {
    let limit = requested.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1-{max}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_size_defaults_and_is_bounded() {
        assert_eq!(limit(None, 20, 100).unwrap(), 20);
        assert_eq!(limit(Some(100), 20, 100).unwrap(), 100);
        assert_eq!(limit(Some(0), 20, 100).unwrap_err().code, "invalid_query");
        assert_eq!(limit(Some(101), 20, 100).unwrap_err().code, "invalid_query");
    }
}
