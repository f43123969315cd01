//! The integrations pages (owners and admins): the integrations with a form per kind, and one
//! integration's page with its config (secrets masked), its test button (the provider's real
//! answer) and its delivery log.

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{Chrome, form_error, list, time};
use crate::api::AppState;
use crate::api::Path;
use crate::ui::forms::Fields;
use crate::ui::{Ui, UiError, see_other};
use outpost_store::domain::DomainError;

/// A config field of an integration kind's form.
#[derive(Debug)]
struct KindField {
    name: &'static str,
    label: &'static str,
    /// Stored sealed and never shown back: a password field, left empty on a change.
    secret: bool,
    required: bool,
    placeholder: &'static str,
}

/// An integration kind and the fields its form asks (CONTRACT.md §11's table; the service checks
/// them, these only label them).
#[derive(Debug)]
struct KindForm {
    kind: &'static str,
    title: &'static str,
    fields: Vec<KindField>,
}

const fn field(
    name: &'static str,
    label: &'static str,
    secret: bool,
    required: bool,
    placeholder: &'static str,
) -> KindField {
    KindField {
        name,
        label,
        secret,
        required,
        placeholder,
    }
}

fn kind_forms() -> Vec<KindForm> {
    let url = |what: &'static str| field("url", what, true, true, "https://…");
    vec![
        KindForm {
            kind: "webhook",
            title: "Webhook (Standard Webhooks, signed)",
            fields: vec![
                field(
                    "url",
                    "URL",
                    false,
                    true,
                    "https://example.com/hooks/outpost",
                ),
                field(
                    "secret",
                    "Signing secret (whsec_…; empty: one is made)",
                    true,
                    false,
                    "whsec_…",
                ),
            ],
        },
        KindForm {
            kind: "slack",
            title: "Slack",
            fields: vec![url("Incoming webhook URL")],
        },
        KindForm {
            kind: "discord",
            title: "Discord",
            fields: vec![url("Webhook URL")],
        },
        KindForm {
            kind: "teams",
            title: "Microsoft Teams (Workflows)",
            fields: vec![url("Workflow URL")],
        },
        KindForm {
            kind: "pagerduty",
            title: "PagerDuty (Events v2)",
            fields: vec![
                field("routing_key", "Routing key", true, true, ""),
                field(
                    "url",
                    "Events URL (empty: PagerDuty's)",
                    false,
                    false,
                    "https://events.pagerduty.com/v2/enqueue",
                ),
            ],
        },
        KindForm {
            kind: "datadog",
            title: "Datadog",
            fields: vec![
                field("api_key", "API key", true, true, ""),
                field("site", "Site", false, false, "datadoghq.com"),
                field("url", "Or an API URL", false, false, ""),
            ],
        },
        KindForm {
            kind: "splunk",
            title: "Splunk (HTTP Event Collector)",
            fields: vec![
                field(
                    "url",
                    "HEC URL",
                    false,
                    true,
                    "https://splunk.example.com:8088",
                ),
                field("token", "HEC token", true, true, ""),
            ],
        },
        KindForm {
            kind: "email",
            title: "Email",
            fields: vec![field(
                "to",
                "Recipients (comma-separated)",
                false,
                true,
                "ops@example.com",
            )],
        },
    ]
}

/// An integration as a row, its config as shown (secret fields masked by the service).
#[derive(Debug)]
struct IntegrationRow {
    id: String,
    name: String,
    kind: String,
    events: String,
    enabled: bool,
    notify_after: i32,
    config: Vec<(String, String)>,
    created: String,
}

impl IntegrationRow {
    fn of(row: &outpost_store::integration::Model) -> Self {
        let config = row
            .config
            .as_object()
            .map(|object| {
                object
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| {
                        let text = match v {
                            Value::String(s) => s.clone(),
                            Value::Array(items) => items
                                .iter()
                                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                                .collect::<Vec<_>>()
                                .join(", "),
                            other => other.to_string(),
                        };
                        (k.clone(), text)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            id: row.id.clone(),
            name: row.name.clone(),
            kind: row.kind.clone(),
            events: row.events.join(", "),
            enabled: row.enabled,
            notify_after: row.notify_after,
            config,
            created: time(Some(row.created_at)),
        }
    }
}

/// The integrations page (owners and admins).
#[derive(Template, WebTemplate)]
#[template(path = "ui/integrations.html")]
struct IntegrationsPage {
    chrome: Chrome,
    rows: Vec<IntegrationRow>,
    kinds: Vec<KindForm>,
    error: Option<String>,
    /// The kind whose form failed, opened again.
    open: String,
}

async fn integrations_page(
    state: &AppState,
    ui: &Ui,
    error: Option<(String, String)>,
) -> Result<Response, UiError> {
    let rows = state.services.integrations.list(&ui.caller).await?;
    let status = if error.is_some() {
        axum::http::StatusCode::BAD_REQUEST
    } else {
        axum::http::StatusCode::OK
    };
    let (open, error) = match error {
        Some((kind, why)) => (kind, Some(why)),
        None => (String::new(), None),
    };
    Ok((
        status,
        IntegrationsPage {
            chrome: Chrome::new(ui, "integrations"),
            rows: rows.iter().map(IntegrationRow::of).collect(),
            kinds: kind_forms(),
            error,
            open,
        },
    )
        .into_response())
}

/// `GET /ui/integrations`: `Integrations::list`, which refuses members.
pub(crate) async fn integrations(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    integrations_page(&state, &ui, None).await
}

/// `POST /ui/integrations`: `Integrations::create` with the kind's fields; a refusal is shown
/// on the page with that kind's form open.
pub(crate) async fn create_integration(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
) -> Result<Response, UiError> {
    let kind = fields.text("kind").unwrap_or_default();
    let Some(form) = kind_forms().into_iter().find(|k| k.kind == kind) else {
        return Err(DomainError::BadRequest(format!("kind: no integration kind {kind:?}")).into());
    };
    let mut config = serde_json::Map::new();
    for f in &form.fields {
        let Some(value) = fields.text(f.name) else {
            continue;
        };
        let value = if f.name == "to" {
            Value::from(list(Some(value)).unwrap_or_default())
        } else {
            Value::String(value)
        };
        config.insert(f.name.to_owned(), value);
    }
    let notify_after = match fields.text("notify_after") {
        None => None,
        Some(n) => Some(n.parse::<i32>().map_err(|_| {
            DomainError::BadRequest(format!("notify_after: {n:?} is not a number"))
        })?),
    };
    let made = state
        .services
        .integrations
        .create(
            &ui.caller,
            outpost_core::service::integrations::IntegrationFields {
                name: fields.text("name"),
                kind: Some(kind.clone()),
                config: Some(Value::Object(config)),
                events: Some(list(fields.text("events")).unwrap_or_default()),
                filter: None,
                enabled: Some(true),
                notify_after,
            },
        )
        .await;
    match made {
        Ok(row) => Ok(see_other(&format!(
            "{}/integrations/{}",
            ui.site.base, row.id
        ))),
        Err(err) => integrations_page(&state, &ui, Some((kind, form_error(err)?))).await,
    }
}

/// A delivery as a row of an integration's log, with its attempts.
#[derive(Debug)]
struct DeliveryRow {
    created: String,
    event: String,
    status: String,
    attempts: Vec<AttemptRow>,
}

/// One attempt of a delivery: what the provider answered.
#[derive(Debug)]
struct AttemptRow {
    at: String,
    code: String,
    duration_ms: i64,
    answer: String,
    error: String,
}

/// The longest part of a provider's answer shown.
const ANSWER_CHARS: usize = 300;

fn clip(text: &str) -> String {
    match text.char_indices().nth(ANSWER_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The test button's result: the provider's real answer.
#[derive(Debug)]
struct TestResult {
    ok: bool,
    code: String,
    duration_ms: i64,
    /// What the provider's body said (clipped).
    answer: String,
    /// What the server made of it.
    error: String,
}

/// One integration's page: its config (secrets masked), test, delivery log.
#[derive(Template, WebTemplate)]
#[template(path = "ui/integration.html")]
struct IntegrationPage {
    chrome: Chrome,
    row: IntegrationRow,
    deliveries: Vec<DeliveryRow>,
    test: Option<TestResult>,
}

async fn integration_page(
    state: &AppState,
    ui: &Ui,
    id: &str,
    test: Option<TestResult>,
) -> Result<Response, UiError> {
    let service = &state.services.integrations;
    let row = service.get(&ui.caller, id).await?;
    let log = service.deliveries(&ui.caller, id, None, 50).await?;
    let deliveries = log
        .iter()
        .map(|(d, attempts)| DeliveryRow {
            created: time(Some(d.created_at)),
            event: d.event_id.clone(),
            status: d.status.clone(),
            attempts: attempts
                .iter()
                .map(|a| AttemptRow {
                    at: time(Some(a.at)),
                    code: a.status_code.map(|c| c.to_string()).unwrap_or_default(),
                    duration_ms: a.duration_ms,
                    answer: clip(a.response.as_deref().unwrap_or_default()),
                    error: a.error.clone().unwrap_or_default(),
                })
                .collect(),
        })
        .collect();
    Ok(IntegrationPage {
        chrome: Chrome::new(ui, "integrations"),
        row: IntegrationRow::of(&row),
        deliveries,
        test,
    }
    .into_response())
}

/// `GET /ui/integrations/{id}`.
pub(crate) async fn integration(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    integration_page(&state, &ui, &id, None).await
}

/// `POST /ui/integrations/{id}/{action}`: `test` (`Integrations::test`: the page again with
/// the provider's answer), `enable`, `disable` (`Integrations::update`) or `delete`.
pub(crate) async fn change_integration(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, UiError> {
    let service = &state.services.integrations;
    match action.as_str() {
        "test" => {
            let report = service.test(&ui.caller, &id).await?;
            let a = &report.attempt;
            let test = TestResult {
                ok: report.ok,
                code: a.status_code.map(|c| c.to_string()).unwrap_or_default(),
                duration_ms: a.duration_ms,
                answer: clip(a.response.as_deref().unwrap_or_default()),
                error: a.error.clone().unwrap_or_default(),
            };
            integration_page(&state, &ui, &id, Some(test)).await
        }
        "enable" | "disable" => {
            service
                .update(
                    &ui.caller,
                    &id,
                    outpost_core::service::integrations::IntegrationFields {
                        enabled: Some(action == "enable"),
                        ..Default::default()
                    },
                )
                .await?;
            Ok(see_other(&format!("{}/integrations/{id}", ui.site.base)))
        }
        "delete" => {
            service.delete(&ui.caller, &id).await?;
            Ok(see_other(&format!("{}/integrations", ui.site.base)))
        }
        other => Err(DomainError::NotFound(format!(
            "no action {other:?}: test, enable, disable or delete"
        ))
        .into()),
    }
}
