//! The WSGI requests a thread has in flight, from Gunicorn's handler taking
//! one to the status that went on the wire.
//!
//! A request is counted once, with what the client saw:
//! - Gunicorn logs it (`log.access`) before its handler returns: the answer
//!   it logs is kept, not counted yet, because the body may still fail
//!   before anything was sent (the status the application gave is then not
//!   the one the client gets);
//! - when the handler returns, or lets out `StopIteration` (Gunicorn ends a
//!   response it already started that way) or an `OSError` (the client is
//!   gone: nothing more is written), the kept answer is counted;
//! - when it lets out any other exception, Gunicorn answers with an error
//!   page: the status of that page is counted (`Stage::AwaitingErrorPage`),
//!   where Gunicorn logs it (`handle_error`), or 500 for an HTTP/2 stream,
//!   whose error Gunicorn answers without logging it.
//!
//! The table is the process's, kept under the GIL (`gil::GilCell`) and
//! scanned from the newest entry by the identity of the request: one entry
//! for a sync worker, one per thread for gthread, one per greenlet for
//! gevent.

use pyo3::prelude::*;

use super::gil::GilCell;
use crate::worker::exemplar::TraceParent;
use crate::worker::labels::Method;

/// What Gunicorn's access log said of a request, as it will be counted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Answer {
    pub method: Method,
    /// The status code; 0 when there was none (Gunicorn then writes the
    /// status line `HTTP/1.1 None`): counted as `other`.
    pub status: u16,
    pub route: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// From the request's start to Gunicorn's log of it.
    pub seconds: f64,
    pub trace: Option<TraceParent>,
    /// Not counted in request series (`PROMETHEUS_EXCLUDE_PATHS`, or the
    /// request's own `EXCLUDE_KEY`).
    pub excluded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Gunicorn's handler runs.
    Handling,
    /// The handler raised: Gunicorn's error page gives the status.
    AwaitingErrorPage,
}

struct Request {
    /// Held so that its address, the identity looked for, is not reused.
    req: Py<PyAny>,
    started: u64,
    stage: Stage,
    answer: Option<Answer>,
    /// The method and route of a failure counted for it, for an error page
    /// that has neither (Gunicorn builds a fresh environ for it).
    failed: Option<(Method, u16)>,
}

/// Requests that wait for an error page that never comes (a worker that
/// exits instead) are let go past this many, oldest first.
const MAX_AWAITING: usize = 16;

static REQUESTS: GilCell<Vec<Request>> = GilCell::new(Vec::new());

/// `req` started now (`started`).
pub(super) fn start(req: &Bound<'_, PyAny>, started: u64) {
    let py = req.py();
    let req = req.clone().unbind();
    REQUESTS.with(py, |requests| {
        requests.push(Request {
            req,
            started,
            stage: Stage::Handling,
            answer: None,
            failed: None,
        })
    });
}

/// What to do with a request Gunicorn logged.
pub(super) enum Logged {
    /// Not begun here (or already counted): nothing.
    Unknown,
    /// Its handler runs: keep the answer (`keep_answer`), made from the
    /// request's start.
    Handling { started: u64 },
    /// The error page after its handler raised: count it now, with the
    /// answer kept (if any) and the failure's method and route.
    ErrorPage {
        started: u64,
        answer: Option<Answer>,
        failed: Option<(Method, u16)>,
    },
}

/// Gunicorn logs `req`: what stage it is in. An error page leaves the table.
pub(super) fn logged(req: &Bound<'_, PyAny>) -> Logged {
    let found = REQUESTS.with(req.py(), |requests| {
        let at = position(requests, req)?;
        let r = &requests[at];
        match r.stage {
            Stage::Handling => Some((Logged::Handling { started: r.started }, None)),
            Stage::AwaitingErrorPage => {
                let r = requests.remove(at);
                let logged = Logged::ErrorPage {
                    started: r.started,
                    answer: r.answer,
                    failed: r.failed,
                };
                Some((logged, Some(r.req)))
            }
        }
    });
    let Some((logged, left)) = found else {
        return Logged::Unknown;
    };
    // Released attached, outside the borrow (freeing may run Python code).
    drop(left.map(|r| r.into_bound(req.py())));
    logged
}

/// Keeps the answer Gunicorn logged for `req`, whose handler runs.
pub(super) fn keep_answer(req: &Bound<'_, PyAny>, answer: Answer) {
    REQUESTS.with(req.py(), |requests| {
        if let Some(at) = position(requests, req) {
            requests[at].answer = Some(answer);
        }
    });
}

/// A failure was counted for `req` (method and route), for its error page.
pub(super) fn note_failure(req: &Bound<'_, PyAny>, method: Method, route: u16) {
    REQUESTS.with(req.py(), |requests| {
        if let Some(at) = position(requests, req) {
            requests[at].failed = Some((method, route));
        }
    });
}

/// How Gunicorn's handler ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// Returned, or raised what ends a response already on the wire or a
    /// connection already gone (`StopIteration`, `OSError`).
    Done,
    /// Raised: Gunicorn logs the error page it answers with.
    ErrorPageLogged,
    /// Raised: Gunicorn answers 500 without logging it (an HTTP/2 stream).
    Answered500,
}

/// What a request that left its handler comes to.
pub(super) enum Left {
    /// Nothing to count now (not begun here, or waiting for its error page).
    Nothing,
    /// Count this.
    Count(Answer),
    /// Its handler returned but Gunicorn logged nothing: the access log was
    /// replaced. Count it with what is known: its start.
    Unlogged(u64),
}

/// `req`'s handler ended as `ended`.
pub(super) fn leave(req: &Bound<'_, PyAny>, ended: Ended) -> Left {
    // Requests that leave the table, released once it is not borrowed.
    let mut released: [Option<Py<PyAny>>; 2] = [None, None];
    let left = REQUESTS.with(req.py(), |requests| {
        let at = position(requests, req)?;
        let r = &mut requests[at];
        let outcome = match (ended, r.answer) {
            (Ended::Done, Some(answer)) => Left::Count(answer),
            (Ended::Done, None) => Left::Unlogged(r.started),
            (Ended::Answered500, answer) => {
                let (method, route) = r
                    .failed
                    .or(answer.map(|a| (a.method, a.route)))
                    .unwrap_or((Method::Other, crate::worker::route::NO_ROUTE));
                let seconds = crate::clock::monotonic_ns().saturating_sub(r.started) as f64 / 1e9;
                Left::Count(Answer {
                    method,
                    status: 500,
                    route,
                    request_bytes: answer.map_or(0, |a| a.request_bytes),
                    response_bytes: 0,
                    seconds: answer.map_or(seconds, |a| a.seconds),
                    trace: answer.and_then(|a| a.trace),
                    excluded: answer.is_some_and(|a| a.excluded),
                })
            }
            (Ended::ErrorPageLogged, _) => {
                r.stage = Stage::AwaitingErrorPage;
                let awaiting = requests
                    .iter()
                    .filter(|r| r.stage == Stage::AwaitingErrorPage)
                    .count();
                if awaiting > MAX_AWAITING {
                    let oldest = requests
                        .iter()
                        .position(|r| r.stage == Stage::AwaitingErrorPage)
                        .expect("counted above");
                    released[1] = Some(requests.remove(oldest).req);
                }
                return Some(Left::Nothing);
            }
        };
        // Counted: it leaves the table.
        released[0] = Some(requests.remove(at).req);
        Some(outcome)
    });
    let py = req.py();
    for r in released.into_iter().flatten() {
        drop(r.into_bound(py));
    }
    left.unwrap_or(Left::Nothing)
}

fn position(requests: &[Request], req: &Bound<'_, PyAny>) -> Option<usize> {
    requests.iter().rposition(|r| r.req.is(req))
}
