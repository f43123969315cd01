//! `GET /agent/v1/ca`, `POST /agent/v1/enroll`, `POST /agent/v1/renew`: how an agent gets and
//! keeps its certificate (CONTRACT.md §19). The rules of who gets which certificate are
//! `outpost_core::enroll`'s; this file only reads requests and shapes answers.
//!
//! Enrollment authenticates by the agent key alone (a certificate is what it asks for); renewal
//! by the client certificate alone, over mutual TLS, so that a copied key cannot renew an
//! agent it does not hold the key of.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use outpost_protocol::AgentId;
use serde::{Deserialize, Serialize};

use super::Context;
use crate::http_error::HttpError;
use crate::listen::PeerCert;
use outpost_store::domain::DomainError;

/// Largest enrollment or renewal body: a CSR is under 1 KiB, and `pki::MAX_CSR_BYTES` caps it.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// The routes.
pub fn router() -> Router<Context> {
    Router::new()
        .route("/agent/v1/ca", get(ca))
        .route("/agent/v1/enroll", post(enroll))
        .route("/agent/v1/renew", post(renew))
}

/// `POST /agent/v1/enroll`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollRequest {
    agent_id: AgentId,
    csr: String,
}

/// `POST /agent/v1/renew`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewRequest {
    csr: String,
}

/// Both routes' answer.
#[derive(Debug, Serialize)]
struct CertificateResponse {
    certificate: String,
    ca: String,
    expires_at: DateTime<Utc>,
}

fn no_ca() -> HttpError {
    HttpError(DomainError::NotFound(
        "this server has no agent CA: agent certificates need the server to serve TLS itself (--tls-auto, or --tls-cert with --tls-key)"
            .into(),
    ))
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, HttpError> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(HttpError(DomainError::TooLarge(format!(
            "body: larger than {MAX_BODY_BYTES} bytes"
        ))));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|err| HttpError(DomainError::BadRequest(format!("body: {err}"))))?;
    if !value.is_object() {
        return Err(HttpError(DomainError::BadRequest(
            "body: a JSON object is expected".into(),
        )));
    }
    serde_json::from_value(value)
        .map_err(|err| HttpError(DomainError::BadRequest(format!("body: {err}"))))
}

/// `GET /agent/v1/ca`: the CA certificate, PEM. Public: it is what the install line's
/// fingerprint is checked against.
async fn ca(State(state): State<Context>) -> Result<Response, HttpError> {
    let enrollment = state.enrollment.as_ref().ok_or_else(no_ca)?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        enrollment.ca().pem().to_owned(),
    )
        .into_response())
}

async fn enroll(
    State(state): State<Context>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<CertificateResponse>, HttpError> {
    let enrollment = state.enrollment.as_ref().ok_or_else(no_ca)?;
    let key =
        outpost_core::access::authenticate_agent(&state.store, crate::http_error::bearer(&headers))
            .await?;
    crate::listen::mark_authenticated();
    let req: EnrollRequest = body(&bytes)?;
    let enrolled = enrollment.enroll(&key, req.agent_id, &req.csr).await?;
    Ok(Json(CertificateResponse {
        certificate: enrolled.certificate,
        ca: enrolled.ca,
        expires_at: enrolled.expires_at,
    }))
}

async fn renew(
    State(state): State<Context>,
    peer_cert: Option<axum::Extension<PeerCert>>,
    bytes: Bytes,
) -> Result<Json<CertificateResponse>, HttpError> {
    let enrollment = state.enrollment.as_ref().ok_or_else(no_ca)?;
    let Some(axum::Extension(PeerCert(fingerprint))) = peer_cert else {
        return Err(HttpError(DomainError::Unauthorized(
            "renewal needs the agent's current certificate (mutual TLS); an agent without one enrolls (POST /agent/v1/enroll)"
                .into(),
        )));
    };
    let identity =
        outpost_core::access::authenticate_agent_cert(&state.store, &fingerprint).await?;
    crate::listen::mark_authenticated();
    let req: RenewRequest = body(&bytes)?;
    let enrolled = enrollment.renew(&identity, &req.csr).await?;
    Ok(Json(CertificateResponse {
        certificate: enrolled.certificate,
        ca: enrolled.ca,
        expires_at: enrolled.expires_at,
    }))
}
