//! Staff accounts, apart from buyers: a username, an argon2id password hash (PHC string, with
//! its own salt) and a role, `merchant` or `admin`. Created and disabled from the command line
//! (`memberline staff add | disable`), signed in with `POST /v1/auth/staff`.
//!
//! Failed sign-ins are counted per username and per address over a window
//! (`auth.staff_sign_in`): past either limit, sign-ins wait (429) until the oldest failure leaves
//! the window, whether the password is right or not, so guessing stays slow. An unknown
//! username costs the same hash check as a known one, so the answer's time does not tell which
//! usernames exist. Passwords and hashes never reach a log: nothing here logs them, and the
//! hash never leaves this module.

use crate::http::auth::Role;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use memberline_platform::settings::StaffSignInSettings;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use std::sync::LazyLock;

/// A staff member who signed in.
#[derive(Clone, Debug)]
pub struct StaffMember {
    pub id: i64,
    pub username: String,
    pub role: Role,
}

/// Why a staff account could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("the username must be 3 to 32 characters of a-z, 0-9, `_`, `.` and `-`")]
    BadUsername,
    #[error("the password must be 12 to 128 characters")]
    BadPassword,
    #[error("a staff account named {0} exists already")]
    Taken(String),
    #[error("staff are merchants or admins")]
    NotStaff,
    #[error(transparent)]
    Database(#[from] DbErr),
    #[error("the password could not be hashed: {0}")]
    Hash(String),
}

fn valid_username(username: &str) -> bool {
    (3..=32).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// The argon2id PHC string of `password`, with a fresh salt.
fn hash(password: &str) -> Result<String, AddError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AddError::Hash(e.to_string()))
}

/// Adds a staff account; its id.
pub async fn add(
    db: &DatabaseConnection,
    username: &str,
    password: &str,
    role: Role,
) -> Result<i64, AddError> {
    if role == Role::User {
        return Err(AddError::NotStaff);
    }
    if !valid_username(username) {
        return Err(AddError::BadUsername);
    }
    if !(12..=128).contains(&password.chars().count()) {
        return Err(AddError::BadPassword);
    }
    let password = password.to_owned();
    let hashed = tokio::task::spawn_blocking(move || hash(&password))
        .await
        .map_err(|e| AddError::Hash(e.to_string()))??;
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO staff (username, password_hash, role) VALUES ($1, $2, $3) \
             ON CONFLICT (username) DO NOTHING RETURNING id",
            [username.into(), hashed.into(), role_text(role).into()],
        ))
        .await?;
    match row {
        Some(row) => Ok(row.try_get("", "id")?),
        None => Err(AddError::Taken(username.to_owned())),
    }
}

/// Disables the account `username`: it signs in no more. `false` when there is no such account.
pub async fn disable(db: &DatabaseConnection, username: &str) -> Result<bool, DbErr> {
    let done = db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE staff SET disabled_at = coalesce(disabled_at, now()) WHERE username = $1",
            [username.into()],
        ))
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether staff account `id` is disabled (an id without an account, minted by
/// `memberline token` for development, is not).
pub async fn is_disabled<C: ConnectionTrait>(conn: &C, id: i64) -> Result<bool, DbErr> {
    Ok(conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 AS disabled FROM staff WHERE id = $1 AND disabled_at IS NOT NULL",
            [id.into()],
        ))
        .await?
        .is_some())
}

fn role_text(role: Role) -> &'static str {
    match role {
        Role::Merchant => "merchant",
        Role::Admin => "admin",
        Role::User => "user",
    }
}

/// What a sign-in came to.
#[derive(Debug)]
pub enum SignIn {
    Signed(StaffMember),
    /// Unknown username, wrong password, or a disabled account: the same answer for each.
    Refused,
    /// Too many failures: try again in this many seconds.
    Limited {
        retry_after_secs: i64,
    },
}

/// A hash to check unknown usernames' passwords against, so they take as long as known ones.
static DECOY: LazyLock<String> =
    LazyLock::new(|| hash("memberline-decoy-password").expect("hashing a constant"));

/// Signs `username` in with `password` from `address`.
pub async fn sign_in(
    db: &DatabaseConnection,
    limits: &StaffSignInSettings,
    username: &str,
    password: &str,
    address: &str,
) -> Result<SignIn, DbErr> {
    if let Some(retry_after_secs) = limited(db, limits, username, address).await? {
        return Ok(SignIn::Limited { retry_after_secs });
    }
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id, role, password_hash, disabled_at IS NOT NULL AS disabled \
             FROM staff WHERE username = $1",
            [username.into()],
        ))
        .await?;
    let account = match &row {
        Some(row) => Some((
            row.try_get::<i64>("", "id")?,
            row.try_get::<String>("", "role")?,
            row.try_get::<String>("", "password_hash")?,
            row.try_get::<bool>("", "disabled")?,
        )),
        None => None,
    };
    let stored = account
        .as_ref()
        .map_or_else(|| DECOY.clone(), |(_, _, hash, _)| hash.clone());
    let password = password.to_owned();
    let matches = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(|e| DbErr::Custom(format!("password check: {e}")))?;
    match account {
        Some((id, role, _, false)) if matches => {
            db.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "DELETE FROM staff_sign_in_failures WHERE username = $1",
                [username.into()],
            ))
            .await?;
            let role = Role::parse(&role)
                .ok_or_else(|| DbErr::Custom(format!("staff {id} has role {role}")))?;
            Ok(SignIn::Signed(StaffMember {
                id,
                username: username.to_owned(),
                role,
            }))
        }
        _ => {
            failed(db, limits, username, address).await?;
            Ok(SignIn::Refused)
        }
    }
}

/// Seconds until a sign-in of `username` from `address` may be tried, when either has used up
/// its failures in the window.
async fn limited(
    db: &DatabaseConnection,
    limits: &StaffSignInSettings,
    username: &str,
    address: &str,
) -> Result<Option<i64>, DbErr> {
    // For each of the two, the failures in the window and when the oldest of the ones that
    // count leaves it.
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "WITH w AS (SELECT username, address, at FROM staff_sign_in_failures \
                        WHERE at > now() - make_interval(secs => $3) \
                          AND (username = $1 OR address = $2)) \
             SELECT (SELECT count(*) FROM w WHERE username = $1) AS by_username, \
                    (SELECT count(*) FROM w WHERE address = $2) AS by_address, \
                    ceil(extract(epoch FROM (SELECT at FROM w WHERE username = $1 \
                        ORDER BY at DESC OFFSET $4 - 1 LIMIT 1) \
                        + make_interval(secs => $3) - now()))::bigint AS username_wait, \
                    ceil(extract(epoch FROM (SELECT at FROM w WHERE address = $2 \
                        ORDER BY at DESC OFFSET $5 - 1 LIMIT 1) \
                        + make_interval(secs => $3) - now()))::bigint AS address_wait",
            [
                username.into(),
                address.into(),
                (limits.window_secs as f64).into(),
                limits.max_failures_per_username.into(),
                limits.max_failures_per_address.into(),
            ],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("the sign-in count returned no row".into()))?;
    let by_username: i64 = row.try_get("", "by_username")?;
    let by_address: i64 = row.try_get("", "by_address")?;
    let mut wait = None;
    if by_username >= limits.max_failures_per_username {
        wait = row.try_get::<Option<i64>>("", "username_wait")?;
    }
    if by_address >= limits.max_failures_per_address {
        let address_wait = row.try_get::<Option<i64>>("", "address_wait")?;
        wait = wait.max(address_wait);
    }
    Ok(wait.map(|w| w.max(1)))
}

/// Counts a failed sign-in, and forgets the ones long out of the window.
async fn failed(
    db: &DatabaseConnection,
    limits: &StaffSignInSettings,
    username: &str,
    address: &str,
) -> Result<(), DbErr> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "WITH gone AS (DELETE FROM staff_sign_in_failures \
                       WHERE at < now() - 2 * make_interval(secs => $3)) \
         INSERT INTO staff_sign_in_failures (username, address) VALUES ($1, $2)",
        [
            username.into(),
            address.into(),
            (limits.window_secs as f64).into(),
        ],
    ))
    .await?;
    Ok(())
}
