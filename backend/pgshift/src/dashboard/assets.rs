//! Dashboard layer: static files of the dashboard, compiled into the binary so that it runs from
//! any directory.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

macro_rules! asset {
    ($path:literal, $mime:literal) => {
        (
            $path,
            $mime,
            include_bytes!(concat!("../../../../web/static/", $path)).as_slice(),
        )
    };
}

const ASSETS: &[(&str, &str, &[u8])] = &[
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("vendor/htmx/htmx.min.js", "text/javascript; charset=utf-8"),
    asset!(
        "vendor/uplot/uPlot.iife.min.js",
        "text/javascript; charset=utf-8"
    ),
    asset!("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
];

/// `GET /ui/static/{*path}`: one of the files above, or 404.
pub async fn serve(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, mime, body)) => {
            let mut response = body.into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
            // Not fingerprinted: a short cache keeps upgrades visible within minutes.
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            response
        }
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
