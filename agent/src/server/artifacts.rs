//! `/artifacts/...`: files saved under `agent.artifacts_dir` (screenshots, page HTML, response
//! bodies of failed runs). Paths are confined to that directory.

use std::path::{Component, Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Shared, error};

/// Serves one artifact file.
pub async fn serve(State(state): State<Shared>, UrlPath(path): UrlPath<String>) -> Response {
    let root = state.loaded().config.agent.artifacts_dir.clone();
    let Some(file) = confine(&root, &path) else {
        return error(
            StatusCode::BAD_REQUEST,
            "artifact paths are relative and stay inside artifacts_dir",
        );
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type(&file)),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => error(StatusCode::NOT_FOUND, "no such artifact"),
    }
}

/// `root/relative`, or `None` when `relative` tries to leave `root`.
pub fn confine(root: &Path, relative: &str) -> Option<PathBuf> {
    let rel = Path::new(relative);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let joined = root.join(rel);
    // Symlinks must not lead out either.
    match (joined.canonicalize(), root.canonicalize()) {
        (Ok(full), Ok(base)) if full.starts_with(&base) => Some(full),
        (Err(_), _) => Some(joined),
        _ => None,
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("png") => "image/png",
        // Saved pages are shown as text, never rendered: they came from the target.
        Some("html") | Some("txt") | Some("log") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_escape_the_root() {
        let root = Path::new("/tmp/patrol-artifacts-test");
        assert!(confine(root, "../etc/passwd").is_none());
        assert!(confine(root, "/etc/passwd").is_none());
        assert!(confine(root, "a/../../b").is_none());
        assert_eq!(
            confine(root, "probe/run/shot.png"),
            Some(root.join("probe/run/shot.png"))
        );
    }
}
