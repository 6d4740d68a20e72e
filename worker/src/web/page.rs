//! The web page (issue 21; `worker/web/`): `index.html`, `app.js` and `style.css`, embedded in
//! the binary, served at `/`, `/app.js` and `/style.css` of every worker's web port. No build
//! step: plain HTML, CSS and JavaScript. The page speaks the HTTP API of this worker and, when
//! it goes away, of another (`/api/workers`), so its Content-Security-Policy lets it fetch from
//! any http(s) origin but run only its own script, with no inline code.

use axum::response::{IntoResponse, Response};
use http::header;

const INDEX: &str = include_str!("../../web/index.html");
const APP: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/style.css");

/// Only the page's own files run; it may talk to the other workers' APIs; no frames, no forms
/// posted elsewhere, no plugins.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self' http: https:; frame-ancestors 'none'; form-action 'self'; \
    base-uri 'none'; object-src 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // A new release's page is taken at once.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub async fn app() -> Response {
    asset("text/javascript; charset=utf-8", APP)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

#[cfg(test)]
mod tests {
    /// The page loads only files the worker serves: its script and style by absolute path, and
    /// no inline script the policy would block.
    #[test]
    fn the_page_refers_only_to_served_files() {
        assert!(super::INDEX.contains(r#"<script src="/app.js">"#));
        assert!(super::INDEX.contains(r#"href="/style.css""#));
        assert_eq!(super::INDEX.matches("<script").count(), 1);
        for handler in ["onclick=", "onsubmit=", "onload=", "oninput=", "onkeydown="] {
            assert!(
                !super::INDEX.contains(handler),
                "no inline event handlers: {handler}"
            );
        }
    }
}
