//! The endpoints of the HTTP API (README "HTTP API", `openapi.json`). Each turns its JSON body
//! or query into the gRPC request of the same call and calls the worker's `FeedService` with it,
//! the session token as `authorization` metadata and the connection's `ConnInfo` as an
//! extension: the token check, the connection limit, the acting user and every write and read
//! are the gRPC API's own code (`service.rs`), never a copy. Only the encodings differ: JSON in
//! and out, statuses mapped by `error.rs`, the live timeline as Server-Sent Events (`sse.rs`).

use super::Web;
use super::error::ApiError;
use super::sse::{EventStream, KEEP_ALIVE};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use chatfeed_proto::feed::feed_server::Feed;
use chatfeed_proto::feed::{
    ChangePasswordRequest, FollowRequest, HistoryRequest, ListRequest, LoginRequest, LogoutRequest,
    PostRequest, TimelineRequest,
};
use http::request::Parts;
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;

/// The OpenAPI 3 description of this API, served at `/api/openapi.json`.
const OPENAPI: &str = include_str!("openapi.json");
/// The header a post's idempotency key comes in (as in Stripe's and the IETF draft's APIs).
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// A request body must arrive within this: a client trickling one holds a place of the
/// worker's connection limit no longer (its head is bounded by `HEADER_TIMEOUT`, `mod.rs`).
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The header a reconnecting SSE client sends with the last event id it received.
const LAST_EVENT_ID: &str = "last-event-id";

/// The API's paths (but `/api/follows/{target}`), as the metrics name them.
pub const ROUTES: [&str; 10] = [
    "/api/login",
    "/api/logout",
    "/api/password",
    "/api/posts",
    "/api/follows",
    "/api/users",
    "/api/timeline",
    "/api/timeline/stream",
    "/api/workers",
    "/api/openapi.json",
];

/// The API's routes; unknown paths are 404 and wrong methods 405, with the JSON error body.
pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(super::page::index))
        .route("/app.js", get(super::page::app))
        .route("/style.css", get(super::page::style))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/password", post(change_password))
        .route("/api/posts", post(post_text))
        .route("/api/follows", post(follow))
        .route("/api/follows/{target}", delete(unfollow))
        .route("/api/users", get(users))
        .route("/api/timeline", get(history))
        .route("/api/timeline/stream", get(stream))
        .route("/api/workers", get(workers))
        .route("/api/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(web)
}

type Answer = Result<Response, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    user: String,
    password: String,
}

async fn login(State(web): State<Arc<Web>>, req: Request) -> Answer {
    let (parts, body) = req.into_parts();
    let b: LoginBody = web.json(&parts, body).await?;
    let r = web.grpc(
        &parts,
        LoginRequest {
            user: b.user,
            password: b.password,
            probe: false,
        },
    )?;
    let reply = web.feed.login(r).await?.into_inner();
    Ok(ok_json(json!({
        "token": reply.token,
        "expires_at_ms": reply.expires_at_ms,
        "created": reply.created,
    })))
}

async fn logout(State(web): State<Arc<Web>>, req: Request) -> Answer {
    let (parts, _) = req.into_parts();
    let r = web.authorized(&parts, LogoutRequest {})?;
    web.feed.logout(r).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    old_password: String,
    new_password: String,
}

async fn change_password(State(web): State<Arc<Web>>, req: Request) -> Answer {
    let (parts, body) = req.into_parts();
    let b: PasswordBody = web.json(&parts, body).await?;
    let r = web.authorized(
        &parts,
        ChangePasswordRequest {
            old_password: b.old_password,
            new_password: b.new_password,
        },
    )?;
    let reply = web.feed.change_password(r).await?.into_inner();
    Ok(ok_json(
        json!({ "token": reply.token, "expires_at_ms": reply.expires_at_ms }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostBody {
    text: String,
    #[serde(default)]
    client_post_id: Option<String>,
    /// The author, if the client names it: it must be the token's user (PERMISSION_DENIED
    /// otherwise, as in gRPC).
    #[serde(default)]
    user: String,
}

async fn post_text(State(web): State<Arc<Web>>, req: Request) -> Answer {
    let (parts, body) = req.into_parts();
    let b: PostBody = web.json(&parts, body).await?;
    let header = header_str(&parts.headers, IDEMPOTENCY_KEY)?;
    let key = match (header, b.client_post_id) {
        (Some(h), Some(f)) if h != f => {
            return Err(ApiError::bad_request(
                "the Idempotency-Key header and client_post_id differ: send one of them",
            ));
        }
        (Some(h), _) => h.to_string(),
        (None, Some(f)) if !f.is_empty() => f,
        _ => {
            return Err(ApiError::bad_request(
                "a post needs an Idempotency-Key header (or client_post_id in the body): a key \
                 you choose, at most 64 bytes, sent again with every retry of the same post so \
                 that it commits once",
            ));
        }
    };
    let r = web.authorized(
        &parts,
        PostRequest {
            user: b.user,
            text: b.text,
            client_post_id: key,
        },
    )?;
    let reply = web.feed.post(r).await?.into_inner();
    Ok(ok_json(json!({
        "seq": reply.seq,
        "ts_ms": reply.ts_ms,
        "duplicate": reply.duplicate,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FollowBody {
    target: String,
    /// The follower, if the client names it: the token's user.
    #[serde(default)]
    user: String,
}

async fn follow(State(web): State<Arc<Web>>, req: Request) -> Answer {
    let (parts, body) = req.into_parts();
    let b: FollowBody = web.json(&parts, body).await?;
    let r = web.authorized(
        &parts,
        FollowRequest {
            user: b.user,
            target: b.target,
        },
    )?;
    let reply = web.feed.follow(r).await?.into_inner();
    Ok(ok_json(json!({ "seq": reply.seq })))
}

async fn unfollow(State(web): State<Arc<Web>>, Path(target): Path<String>, req: Request) -> Answer {
    let (parts, _) = req.into_parts();
    let r = web.authorized(
        &parts,
        FollowRequest {
            user: String::new(),
            target,
        },
    )?;
    let reply = web.feed.unfollow(r).await?.into_inner();
    Ok(ok_json(json!({ "seq": reply.seq })))
}

async fn users(State(web): State<Arc<Web>>, req: Request) -> Answer {
    let (parts, _) = req.into_parts();
    let q = super::query::Query::parse(&parts, &["after", "limit"])?;
    let r = web.authorized(
        &parts,
        ListRequest {
            user: String::new(),
            after: q.get("after").unwrap_or_default().to_string(),
            limit: q.number("limit")?.unwrap_or(0),
        },
    )?;
    let reply = web.feed.list(r).await?.into_inner();
    let next = (!reply.next.is_empty()).then_some(reply.next);
    Ok(ok_json(json!({
        "users": reply.users,
        "following": reply.following,
        "next": next,
    })))
}

async fn history(State(web): State<Arc<Web>>, req: Request) -> Answer {
    let (parts, _) = req.into_parts();
    let q = super::query::Query::parse(&parts, &["after", "limit"])?;
    let r = web.authorized(
        &parts,
        HistoryRequest {
            after_seq: q.number("after")?,
            limit: q.number("limit")?.unwrap_or(0),
        },
    )?;
    let reply = web.feed.history(r).await?.into_inner();
    let posts: Vec<Value> = reply
        .posts
        .iter()
        .map(|p| json!({ "seq": p.seq, "author": p.author, "text": p.text, "ts_ms": p.ts_ms }))
        .collect();
    Ok(ok_json(
        json!({ "posts": posts, "last_seq": reply.last_seq }),
    ))
}

async fn stream(State(web): State<Arc<Web>>, req: Request) -> Answer {
    let (parts, _) = req.into_parts();
    let q = super::query::Query::parse(&parts, &["after", "cluster"])?;
    // A reconnecting SSE client sends the last id it received: that, not the URL's `after`
    // (the one it first opened with), is where it stands.
    // An empty one is no id (a client that received none yet may send it so).
    let last_id = header_str(&parts.headers, LAST_EVENT_ID)?.filter(|id| !id.trim().is_empty());
    let after = match last_id {
        Some(id) => Some(id.trim().parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "Last-Event-ID {id:?} is not a seq (a whole number, the id of the last post event \
                 received)"
            ))
        })?),
        None => q.number("after")?,
    };
    let r = web.authorized(
        &parts,
        TimelineRequest {
            user: String::new(),
            after_seq: after,
            cluster_id: q.get("cluster").unwrap_or_default().to_string(),
        },
    )?;
    let answer = web.feed.timeline(r).await?;
    let cluster = chatfeed_common::reach::cluster_of(answer.metadata()).unwrap_or_default();
    let items = answer.into_inner();
    let body = Body::from_stream(EventStream::new(items, KEEP_ALIVE));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache, no-store"),
            // nginx and similar proxies pass each event on at once.
            (http::HeaderName::from_static("x-accel-buffering"), "no"),
            // The cluster the events' seqs belong to: resume with `cluster` = this.
            (
                http::HeaderName::from_static("x-chatfeed-cluster"),
                cluster.as_str(),
            ),
        ],
        body,
    )
        .into_response())
}

async fn workers(State(web): State<Arc<Web>>) -> Answer {
    let list = web.workers().await?;
    Ok(ok_json(json!({ "workers": list, "this": web.web_addr })))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no such endpoint: the API is described at GET /api/openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNIMPLEMENTED",
        "this endpoint does not take this method: see GET /api/openapi.json",
    )
}

/// A 200 answer with the JSON `v`.
fn ok_json(v: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// The value of header `name`, if sent; 400 when it is not visible ASCII.
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request(format!("the {name} header is not ASCII text")))
        })
        .transpose()
}

impl Web {
    /// `msg` as a gRPC request of this HTTP request's connection (its `ConnInfo`) and session
    /// token, if any.
    fn grpc<T>(&self, parts: &Parts, msg: T) -> Result<tonic::Request<T>, ApiError> {
        let mut r = tonic::Request::new(msg);
        if let Some(info) = parts.extensions.get::<crate::limits::ConnInfo>() {
            r.extensions_mut().insert(info.clone());
        }
        if let Some(v) = header_str(&parts.headers, header::AUTHORIZATION.as_str())? {
            let v = v.parse().map_err(|_| {
                ApiError::from(tonic::Status::unauthenticated(
                    "the Authorization header is malformed: send `Authorization: Bearer <token>` \
                     with the token of POST /api/login",
                ))
            })?;
            r.metadata_mut()
                .insert(chatfeed_common::accounts::AUTHORIZATION, v);
        }
        Ok(r)
    }

    /// `grpc`, for the calls that need a session: without an `Authorization` header, 401 saying
    /// how to get one (the shared check would say the same in gRPC's words).
    fn authorized<T>(&self, parts: &Parts, msg: T) -> Result<tonic::Request<T>, ApiError> {
        crate::limits::check_conn(parts.extensions.get())?;
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Err(tonic::Status::unauthenticated(
                "no session token: log in first (POST /api/login) and send `Authorization: \
                 Bearer <token>` with every call",
            )
            .into());
        }
        self.grpc(parts, msg)
    }

    /// The JSON body of a request: 415 unless it says `Content-Type: application/json`, 413 over
    /// `limits.max_request_bytes`, 400 when it is not JSON of the expected shape.
    async fn json<T: DeserializeOwned>(&self, parts: &Parts, body: Body) -> Result<T, ApiError> {
        let json = header_str(&parts.headers, header::CONTENT_TYPE.as_str())?.is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "INVALID_ARGUMENT",
                "send the body as JSON, with `Content-Type: application/json`",
            ));
        }
        let max = self.max_request_bytes;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RESOURCE_EXHAUSTED",
                format!(
                    "request too large: a request is at most {max} bytes \
                     (limits.max_request_bytes); send a shorter one"
                ),
            )
        };
        let declared = header_str(&parts.headers, header::CONTENT_LENGTH.as_str())?
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let read = http_body_util::Limited::new(body, max).collect();
        let bytes = tokio::time::timeout(BODY_TIMEOUT, read)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "DEADLINE_EXCEEDED",
                    format!(
                        "the request body did not arrive within {} s; send it at once",
                        BODY_TIMEOUT.as_secs()
                    ),
                )
            })?
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_large()
                } else {
                    ApiError::bad_request(format!("the request body could not be read: {e}"))
                }
            })?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request(format!("the body is not the JSON this call takes: {e}"))
        })
    }
}
