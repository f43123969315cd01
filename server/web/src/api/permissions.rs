//! What every route needs, declared in one table and applied before any handler runs.
//!
//! Each REST route is a row of [`ROUTES`]: public (health, the installer, the sign-in routes
//! whose body is the credential), agent-or-caller (release metadata and downloads, which the
//! handler authenticates either way), or a caller with a scope and a least role. The layer
//! [`authorize`] looks the matched route up, authenticates the caller, refuses a missing
//! scope or a role too low (403, naming both), and hands the [`Caller`] to the handler, whose
//! `Caller` extractor only takes it from there: a route missing from the table answers 500
//! and takes no caller, so it fails closed, and `tests/openapi.rs` fails on it.
//!
//! The table is the route-level rule of CONTRACT.md §9; finer rules that depend on the request (a
//! forced update, a control command, someone else's API key) stay in the services
//! (`service::access::Action`), which also keeps them when something other than HTTP calls.
//! `GET /metrics` is outside `/api` and checks its caller itself (not counted against the
//! rate limit).

use crate::http_error::HttpError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ClientAddr;
use crate::api::AppState;
use outpost_store::domain::{Caller, DomainError, Role, Scope};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Permission {
    /// No bearer token.
    Public,
    /// An agent key or a caller; the handler authenticates it.
    AgentOrCaller,
    /// An agent key (`opa_…`) only; the handler authenticates it.
    Agent,
    /// A user or an API key, holding `scope` (when there is one) and at least `role`.
    Caller {
        /// The scope an API key needs (`None`: any key).
        scope: Option<Scope>,
        /// The least role.
        role: Role,
    },
    /// Any user or API key of a tenant, even a user who has not verified their email yet
    /// (with `--require-verified-email` every other route refuses them, CONTRACT.md §18): the
    /// routes that verify it, and who-am-I.
    SignedIn,
    /// An owner of the server's first tenant (the one its owner key belongs to), holding
    /// `scope`: what spans tenants (`/api/tenants`). The layer checks the scope and the owner
    /// role; the service checks the tenant, since only it knows which is first.
    ServerOwner {
        /// The scope an API key needs.
        scope: Scope,
    },
}

/// One route and what it needs.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The HTTP method.
    pub method: &'static str,
    /// The route as the router declares it (`/api/jobs/{id}`).
    pub path: &'static str,
    /// What it needs.
    pub permission: Permission,
}

const fn public(method: &'static str, path: &'static str) -> Rule {
    Rule {
        method,
        path,
        permission: Permission::Public,
    }
}

const fn caller(method: &'static str, path: &'static str, scope: Scope, role: Role) -> Rule {
    Rule {
        method,
        path,
        permission: Permission::Caller {
            scope: Some(scope),
            role,
        },
    }
}

use Role::{Admin, Member, Owner};
use Scope::{
    AgentsRead, AgentsWrite, AuditRead, IntegrationsWrite, JobsRead, JobsRun, KeysWrite,
    MetricsRead, SchedulesRead, SchedulesWrite, ScriptsWrite, UsersWrite,
};

/// Every REST route and what it needs (CONTRACT.md §9's table of roles, route by route).
pub const ROUTES: &[Rule] = &[
    public("GET", "/healthz"),
    public("GET", "/readyz"),
    public("GET", "/deploy.sh"),
    // The Debian packages the server ships with: files no more secret than /deploy.sh.
    public("GET", "/downloads/packages/{file}"),
    // Sign-in: the body is the credential (and the limits of `service::limits` apply).
    public("POST", "/api/auth/login"),
    public("POST", "/api/auth/refresh"),
    public("POST", "/api/auth/logout"),
    public("POST", "/api/auth/accept-invite"),
    // The second step of a sign-in (CONTRACT.md §18): the ticket is the credential.
    public("POST", "/api/auth/login/totp"),
    public("POST", "/api/auth/login/totp/setup"),
    public("POST", "/api/auth/login/totp/confirm"),
    // One's own second factor: a user (the service refuses API keys).
    Rule {
        method: "POST",
        path: "/api/auth/totp/setup",
        permission: Permission::Caller {
            scope: None,
            role: Member,
        },
    },
    Rule {
        method: "POST",
        path: "/api/auth/totp/confirm",
        permission: Permission::Caller {
            scope: None,
            role: Member,
        },
    },
    Rule {
        method: "DELETE",
        path: "/api/auth/totp",
        permission: Permission::Caller {
            scope: None,
            role: Member,
        },
    },
    Rule {
        method: "GET",
        path: "/api/auth/me",
        permission: Permission::SignedIn,
    },
    // Mail to people (CONTRACT.md §18): a reset's body is its credential; verifying needs the
    // session of the user who verifies.
    public("POST", "/api/auth/password-reset"),
    public("POST", "/api/auth/password-reset/confirm"),
    Rule {
        method: "POST",
        path: "/api/auth/verify",
        permission: Permission::SignedIn,
    },
    Rule {
        method: "POST",
        path: "/api/auth/verify/resend",
        permission: Permission::SignedIn,
    },
    caller("GET", "/api/mail", AuditRead, Admin),
    // Agent keys: everyone reads them; admins change them.
    caller("GET", "/api/agents/keys", AgentsRead, Member),
    caller("POST", "/api/agents/keys", KeysWrite, Admin),
    caller("GET", "/api/agents/keys/{id}", AgentsRead, Member),
    caller("PATCH", "/api/agents/keys/{id}", KeysWrite, Admin),
    caller("DELETE", "/api/agents/keys/{id}", KeysWrite, Admin),
    caller("POST", "/api/agents/keys/{id}/regenerate", KeysWrite, Admin),
    caller("POST", "/api/agents/keys/{id}/ping", JobsRun, Member),
    caller("POST", "/api/agents/keys/{id}/command", JobsRun, Member),
    // Agents: everyone reads them and runs what their keys allow; admins change them.
    caller("GET", "/api/agents/connected", AgentsRead, Member),
    caller("GET", "/api/agents", AgentsRead, Member),
    caller("GET", "/api/agents/{id}", AgentsRead, Member),
    caller("PATCH", "/api/agents/{id}", AgentsWrite, Admin),
    caller("DELETE", "/api/agents/{id}", AgentsWrite, Admin),
    caller("POST", "/api/agents/{id}/unrevoke", AgentsWrite, Admin),
    caller("POST", "/api/agents/{id}/command", JobsRun, Member),
    caller("GET", "/api/commands/{id}", JobsRead, Member),
    // Jobs: members trigger, read and cancel.
    caller("POST", "/api/jobs", JobsRun, Member),
    caller("GET", "/api/jobs", JobsRead, Member),
    caller("GET", "/api/jobs/{id}", JobsRead, Member),
    caller("POST", "/api/jobs/{id}/cancel", JobsRun, Member),
    caller("GET", "/api/jobs/{id}/events", JobsRead, Member),
    caller("GET", "/api/jobs/{id}/webhook", JobsRead, Member),
    caller("GET", "/api/jobs/{id}/summary", JobsRead, Member),
    caller("GET", "/api/jobs/{id}/runs", JobsRead, Member),
    caller("GET", "/api/jobs/{id}/export", JobsRead, Member),
    caller("POST", "/api/jobs/{id}/rerun", JobsRun, Member),
    caller(
        "GET",
        "/api/jobs/{id}/runs/{run_id}/output",
        JobsRead,
        Member,
    ),
    // The webhook signing secret is an integration's.
    caller(
        "GET",
        "/api/webhooks/signing-secret",
        IntegrationsWrite,
        Admin,
    ),
    caller(
        "POST",
        "/api/webhooks/signing-secret/rotate",
        IntegrationsWrite,
        Admin,
    ),
    // The nodes serve every tenant: the server's owner.
    caller("GET", "/api/nodes", MetricsRead, Owner),
    caller("GET", "/api/audit", AuditRead, Admin),
    caller("GET", "/api/audit/verify", AuditRead, Admin),
    // Users: admins read, owners change.
    caller("GET", "/api/users", UsersWrite, Admin),
    caller("POST", "/api/users", UsersWrite, Owner),
    caller("GET", "/api/users/{id}", UsersWrite, Admin),
    caller("PATCH", "/api/users/{id}", UsersWrite, Owner),
    caller("DELETE", "/api/users/{id}", UsersWrite, Owner),
    caller("DELETE", "/api/users/{id}/totp", UsersWrite, Owner),
    // Schedules: everyone reads them and runs one now (as a job of their own); admins
    // make and change them (CONTRACT.md §9's table).
    caller("GET", "/api/schedules", SchedulesRead, Member),
    caller("GET", "/api/schedules/preview", SchedulesRead, Member),
    caller("GET", "/api/schedules/{id}", SchedulesRead, Member),
    caller("POST", "/api/schedules", SchedulesWrite, Admin),
    caller("PATCH", "/api/schedules/{id}", SchedulesWrite, Admin),
    caller("DELETE", "/api/schedules/{id}", SchedulesWrite, Admin),
    caller("POST", "/api/schedules/{id}/run", JobsRun, Member),
    // Rollouts: everyone reads them; admins start and steer them; a rollback is a downgrade,
    // and the fleet's minimum version binds every update: owners (CONTRACT.md §17).
    caller("GET", "/api/rollouts", AgentsRead, Member),
    caller("POST", "/api/rollouts", AgentsWrite, Admin),
    caller("GET", "/api/rollouts/{id}", AgentsRead, Member),
    caller("GET", "/api/rollouts/{id}/agents", AgentsRead, Member),
    caller("POST", "/api/rollouts/{id}/pause", AgentsWrite, Admin),
    caller("POST", "/api/rollouts/{id}/resume", AgentsWrite, Admin),
    caller("POST", "/api/rollouts/{id}/abort", AgentsWrite, Admin),
    caller("POST", "/api/rollouts/{id}/rollback", AgentsWrite, Owner),
    caller("GET", "/api/fleet/policy", AgentsRead, Member),
    caller("PUT", "/api/fleet/policy", AgentsWrite, Owner),
    // Events: what happened to jobs and schedules, for everyone who reads jobs.
    caller("GET", "/api/events", JobsRead, Member),
    // Integrations: their configs reach other systems and their logs hold providers'
    // answers; owners and admins (CONTRACT.md §9's table).
    caller("GET", "/api/integrations", IntegrationsWrite, Admin),
    caller("POST", "/api/integrations", IntegrationsWrite, Admin),
    caller("GET", "/api/integrations/{id}", IntegrationsWrite, Admin),
    caller("PATCH", "/api/integrations/{id}", IntegrationsWrite, Admin),
    caller("DELETE", "/api/integrations/{id}", IntegrationsWrite, Admin),
    caller(
        "POST",
        "/api/integrations/{id}/test",
        IntegrationsWrite,
        Admin,
    ),
    caller(
        "GET",
        "/api/integrations/{id}/deliveries",
        IntegrationsWrite,
        Admin,
    ),
    caller("GET", "/api/events/stream", JobsRead, Member),
    // API keys: everyone their own (owners everyone's, decided in the service).
    caller("POST", "/api/keys", KeysWrite, Member),
    caller("GET", "/api/keys", KeysWrite, Member),
    caller("DELETE", "/api/keys/{id}", KeysWrite, Member),
    // Tenants: each caller reads its own; the server's owner reads and changes them all.
    public("POST", "/api/auth/register"),
    // Single sign-on (CONTRACT.md §18): the provider's answer is the credential; a link
    // started by a program authenticates its bearer token in the handler.
    public("GET", "/api/auth/oidc/start"),
    public("GET", "/api/auth/oidc/callback"),
    public("POST", "/api/auth/oidc/exchange"),
    Rule {
        method: "GET",
        path: "/api/tenants",
        permission: Permission::ServerOwner { scope: UsersWrite },
    },
    Rule {
        method: "GET",
        path: "/api/tenants/{id}",
        permission: Permission::Caller {
            scope: None,
            role: Member,
        },
    },
    Rule {
        method: "PATCH",
        path: "/api/tenants/{id}",
        permission: Permission::ServerOwner { scope: UsersWrite },
    },
    // Release metadata and downloads: the same for every tenant, for agents and callers.
    Rule {
        method: "GET",
        path: "/api/releases/latest",
        permission: Permission::AgentOrCaller,
    },
    Rule {
        method: "GET",
        path: "/api/releases/{version}",
        permission: Permission::AgentOrCaller,
    },
    Rule {
        method: "GET",
        path: "/downloads/{version}/{target}/{file}",
        permission: Permission::AgentOrCaller,
    },
    // The script library (CONTRACT.md §15): everyone reads it; admins upload and delete; agents
    // download the bundles of their tenant.
    caller("GET", "/api/scripts", JobsRead, Member),
    caller("GET", "/api/scripts/{name}", JobsRead, Member),
    caller("POST", "/api/scripts", ScriptsWrite, Admin),
    caller(
        "DELETE",
        "/api/scripts/{name}/versions/{version}",
        ScriptsWrite,
        Admin,
    ),
    // Scripts in the dashboard (CONTRACT.md §20): everyone reads versions' and drafts' bytes;
    // those who may upload may also switch a name off, save drafts and sign them.
    caller("PATCH", "/api/scripts/{name}", ScriptsWrite, Admin),
    caller(
        "GET",
        "/api/scripts/{name}/versions/{version}/bundle",
        JobsRead,
        Member,
    ),
    caller("GET", "/api/scripts/{name}/drafts", JobsRead, Member),
    caller("POST", "/api/scripts/{name}/drafts", ScriptsWrite, Admin),
    caller("GET", "/api/script-drafts", JobsRead, Member),
    caller(
        "DELETE",
        "/api/scripts/{name}/drafts/{version}",
        ScriptsWrite,
        Admin,
    ),
    caller(
        "GET",
        "/api/scripts/{name}/drafts/{version}/bundle",
        JobsRead,
        Member,
    ),
    caller(
        "POST",
        "/api/scripts/{name}/drafts/{version}/signature",
        ScriptsWrite,
        Admin,
    ),
    Rule {
        method: "GET",
        path: "/agent/v1/scripts/{sha256}",
        permission: Permission::Agent,
    },
];

/// What `method path` needs (`HEAD` is `GET`'s), or `None` for a route not declared.
pub fn permission(method: &Method, path: &str) -> Option<Permission> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTES
        .iter()
        .find(|rule| rule.method == method && rule.path == path)
        .map(|rule| rule.permission)
}

/// Why a caller may not use a route, if it may not.
pub fn refusal(caller: &Caller, scope: Option<Scope>, role: Role) -> Option<String> {
    if let Some(scope) = scope
        && !caller.scopes.allows(scope)
    {
        return Some(format!(
            "this API key lacks the {scope} scope; its scopes are {}",
            caller
                .scopes
                .list()
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !caller.role.at_least(role) {
        return Some(format!(
            "this needs the {role} role or higher; this caller's role is {}",
            caller.role
        ));
    }
    None
}

/// The layer applying [`ROUTES`] to every matched route.
pub async fn authorize(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    ClientAddr(client): ClientAddr,
    mut request: Request,
    next: Next,
) -> Response {
    let path = matched.as_ref().map_or("", |m| m.as_str());
    let Some(permission) = permission(request.method(), path) else {
        let why = format!(
            "{} {path} declares no permission (api::permissions::ROUTES)",
            request.method()
        );
        tracing::error!("{why}");
        return HttpError(DomainError::Internal(anyhow::anyhow!(why))).into_response();
    };
    let needs = match permission {
        Permission::Caller { scope, role } => Some((scope, role)),
        Permission::SignedIn => Some((None, Role::Member)),
        Permission::ServerOwner { scope } => Some((Some(scope), Role::Owner)),
        Permission::Public | Permission::AgentOrCaller | Permission::Agent => None,
    };
    if let Some((scope, role)) = needs {
        let token = crate::http_error::bearer(request.headers());
        let access = &state.services.access;
        let authenticated = if permission == Permission::SignedIn {
            access.authenticate_unverified(token, client).await
        } else {
            access.authenticate(token, client).await
        };
        let caller = match authenticated {
            Ok(caller) => caller,
            Err(err) => return HttpError(err).into_response(),
        };
        // The connection no longer counts against the caps on unauthenticated ones.
        crate::listen::mark_authenticated();
        if let Some(why) = refusal(&caller, scope, role) {
            return HttpError(DomainError::Forbidden(format!(
                "{} {path}: {why}",
                request.method()
            )))
            .into_response();
        }
        request.extensions_mut().insert(caller);
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(method: &str, path: &str) -> (Option<Scope>, Role) {
        match permission(&method.parse().expect("method"), path) {
            Some(Permission::Caller { scope, role }) => (scope, role),
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn each_route_is_declared_once() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    a.method != b.method || a.path != b.path,
                    "{} {} declared twice",
                    a.method,
                    a.path
                );
            }
        }
    }

    /// CONTRACT.md §9's table, pinned where it says it in words.
    #[test]
    fn the_table_says_what_spec_9_says() {
        // Owners: users, roles, the server's nodes.
        for (method, path) in [
            ("POST", "/api/users"),
            ("PATCH", "/api/users/{id}"),
            ("DELETE", "/api/users/{id}"),
            ("GET", "/api/nodes"),
        ] {
            assert_eq!(needs(method, path).1, Role::Owner, "{method} {path}");
        }
        // Admins: agents, agent keys, the audit log.
        for (method, path) in [
            ("POST", "/api/agents/keys"),
            ("DELETE", "/api/agents/keys/{id}"),
            ("PATCH", "/api/agents/{id}"),
            ("DELETE", "/api/agents/{id}"),
            ("GET", "/api/audit"),
            ("GET", "/api/users"),
        ] {
            assert_eq!(needs(method, path).1, Role::Admin, "{method} {path}");
        }
        // Members: read agents and jobs, trigger and cancel runs, their own API keys.
        for (method, path) in [
            ("GET", "/api/agents"),
            ("GET", "/api/jobs/{id}"),
            ("POST", "/api/jobs"),
            ("POST", "/api/jobs/{id}/cancel"),
            ("POST", "/api/agents/{id}/command"),
            ("POST", "/api/keys"),
            ("DELETE", "/api/keys/{id}"),
        ] {
            assert_eq!(needs(method, path).1, Role::Member, "{method} {path}");
        }
        assert_eq!(needs("POST", "/api/jobs").0, Some(Scope::JobsRun));
        assert_eq!(needs("GET", "/api/jobs").0, Some(Scope::JobsRead));
        assert_eq!(needs("GET", "/api/audit").0, Some(Scope::AuditRead));
        assert_eq!(needs("GET", "/api/nodes").0, Some(Scope::MetricsRead));
        assert_eq!(needs("HEAD", "/api/jobs").0, Some(Scope::JobsRead));
        assert_eq!(permission(&Method::GET, "/api/nope"), None);
    }
}
