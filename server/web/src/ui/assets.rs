//! The dashboard's CSS and JavaScript, compiled into the binary and served under names that
//! carry a hash of their content (`ui.3f2a….css`), so that browsers may cache them for a year
//! and a new build is fetched at once.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The stylesheet.
pub const CSS: &str = include_str!("assets/ui.css");
/// The script (EventSource, ANSI output, forms' small helpers).
pub const JS: &str = include_str!("assets/ui.js");

/// The served names of the assets.
#[derive(Debug)]
pub struct Names {
    /// `ui.<hash>.css`.
    pub css: String,
    /// `ui.<hash>.js`.
    pub js: String,
}

fn hashed(ext: &str, content: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, content.as_bytes());
    format!("ui.{}.{ext}", hex::encode(&digest.as_ref()[..8]))
}

static NAMES: LazyLock<Names> = LazyLock::new(|| Names {
    css: hashed("css", CSS),
    js: hashed("js", JS),
});

/// The served names.
pub fn names() -> &'static Names {
    &NAMES
}

/// `GET /ui/static/{file}`.
pub async fn serve(Path(file): Path<String>) -> Response {
    let names = names();
    let (body, kind) = if file == names.css {
        (CSS, "text/css; charset=utf-8")
    } else if file == names.js {
        (JS, "text/javascript; charset=utf-8")
    } else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        body,
    )
        .into_response()
}
