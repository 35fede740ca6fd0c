//! `agentwal._agentwal`: the PyO3 layer of the agentwal Python package.
//!
//! A thin binding over the Rust journal (`agentwal::journal`), the work queue
//! (`agentwal::queue`) and the operator views (`agentwal::inspect`). Nothing
//! here re-implements the write protocol: every unit, effect, checkpoint,
//! commit and rollback goes through the Rust API. This layer only
//!
//! * converts Python values to and from JSON (`serde_json::Value`), refusing
//!   anything that would not replay (non-JSON types, NaN, huge ints) with a
//!   `TypeError` / `ValueError` *before* it is recorded;
//! * releases the GIL around every call that may write or wait for
//!   `fdatasync`, and takes it back only to run the caller's Python code;
//! * maps the Rust errors to the exception classes of `agentwal.errors`
//!   (same messages, fields as attributes);
//! * never lets a Rust panic cross into Python: a Python `BaseException`
//!   that is not an `Exception` (KeyboardInterrupt, SystemExit,
//!   CancelledError) raised inside an effect unwinds out of the Rust call
//!   without recording an outcome (the effect stays in doubt, exactly as
//!   after a kill) and is re-raised unchanged.

// PyO3 0.22's `#[pymethods]` expansion converts `PyResult` errors into
// `PyErr` again, which newer clippy flags in the caller's code.
#![allow(clippy::useless_conversion)]

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentwal::journal::{
    self, Attempt, Compensation, Effect, EffectCtx, ErrorClass, Journal, JournalOptions,
    OnExhausted, Outcome, Probe, RetryPolicy, StepError, Unit, UnitState,
};
use agentwal::journal::{Approval, Resolution};
use agentwal::queue::{self, Claimed, NackOutcome, QueueOptions, WorkQueue};
use parking_lot::Mutex;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

static ERRORS: GILOnceCell<Py<PyModule>> = GILOnceCell::new();

/// Builds an instance of `agentwal.errors.<class>` with `msg` and attributes.
fn make_err(py: Python<'_>, class: &str, msg: String, attrs: Vec<(&str, PyObject)>) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let m = ERRORS.get_or_try_init(py, || {
            PyModule::import_bound(py, "agentwal.errors").map(|m| m.unbind())
        })?;
        let cls = m.bind(py).getattr(class)?;
        let inst = cls.call1((msg.clone(),))?;
        for (k, v) in attrs {
            inst.setattr(k, v)?;
        }
        Ok(PyErr::from_value_bound(inst))
    };
    build().unwrap_or_else(|e| e)
}

fn s(py: Python<'_>, v: &str) -> PyObject {
    v.into_py(py)
}

/// Maps a journal error to its Python exception (same message).
fn journal_err(py: Python<'_>, e: journal::Error) -> PyErr {
    use journal::Error as E;
    let msg = e.to_string();
    let retryable = e.is_retryable();
    let (class, mut attrs): (&str, Vec<(&str, PyObject)>) = match &e {
        E::Log(l) => return log_err(py, l, msg),
        E::PayloadTooLarge {
            unit,
            what,
            size,
            limit,
        } => (
            "PayloadTooLarge",
            vec![
                ("unit", s(py, unit)),
                ("what", s(py, what)),
                ("size", size.into_py(py)),
                ("limit", limit.into_py(py)),
            ],
        ),
        E::Encode { unit, what, .. } => (
            "EncodeError",
            vec![("unit", s(py, unit)), ("what", s(py, what))],
        ),
        E::BadRecord { .. }
        | E::BadRecordAt { .. }
        | E::UnknownRecordKind { .. }
        | E::Inconsistent { .. }
        | E::BadSnapshot { .. } => ("Corrupt", vec![]),
        E::UnitFinished { unit, state } => (
            "UnitFinished",
            vec![("unit", s(py, unit)), ("state", s(py, state))],
        ),
        E::UnitBusy { unit } => ("UnitBusy", vec![("unit", s(py, unit))]),
        E::UnknownUnit { unit } => ("UnknownUnit", vec![("unit", s(py, unit))]),
        E::EffectMismatch {
            unit,
            step,
            recorded,
            requested,
        } => (
            "EffectMismatch",
            vec![
                ("unit", s(py, unit)),
                ("step", step.into_py(py)),
                ("recorded", s(py, recorded)),
                ("requested", s(py, requested)),
            ],
        ),
        E::KeyConflict {
            unit,
            step,
            effect,
            key,
            recorded,
        } => (
            "KeyConflict",
            vec![
                ("unit", s(py, unit)),
                ("step", step.into_py(py)),
                ("effect", s(py, effect)),
                ("key", s(py, key)),
                ("recorded", s(py, recorded)),
            ],
        ),
        E::KeyBusy {
            unit,
            step,
            effect,
            key,
            holder,
        } => (
            "KeyBusy",
            vec![
                ("unit", s(py, unit)),
                ("step", step.into_py(py)),
                ("effect", s(py, effect)),
                ("key", s(py, key)),
                ("holder", s(py, holder)),
            ],
        ),
        E::RollingBack { unit, step, action } => (
            "RollingBack",
            vec![
                ("unit", s(py, unit)),
                ("step", step.into_py(py)),
                ("action", s(py, action)),
            ],
        ),
        E::UnreplayedSteps {
            unit,
            replayed,
            recorded,
        } => (
            "UnreplayedSteps",
            vec![
                ("unit", s(py, unit)),
                ("replayed", replayed.into_py(py)),
                ("recorded", recorded.into_py(py)),
            ],
        ),
        E::ResultTooLarge {
            unit,
            step,
            effect,
            key,
            size,
            limit,
        } => (
            "ResultTooLarge",
            vec![
                ("unit", s(py, unit)),
                ("step", step.into_py(py)),
                ("effect", s(py, effect)),
                ("key", s(py, key)),
                ("size", size.into_py(py)),
                ("limit", limit.into_py(py)),
            ],
        ),
        E::ResultNotReplayable {
            unit,
            step,
            effect,
            key,
            reason,
        } => (
            "ResultNotReplayable",
            vec![
                ("unit", s(py, unit)),
                ("step", step.into_py(py)),
                ("effect", s(py, effect)),
                ("key", s(py, key)),
                ("reason", s(py, reason)),
            ],
        ),
        E::InDoubt {
            unit,
            step,
            effect,
            key,
        } => (
            "InDoubt",
            vec![
                ("unit", s(py, unit)),
                ("step", step.into_py(py)),
                ("effect", s(py, effect)),
                ("key", s(py, key)),
            ],
        ),
        E::EffectFailed {
            unit,
            step,
            effect,
            message,
        } => (
            "EffectFailed",
            vec![
                ("unit", s(py, unit)),
                ("step", step.into_py(py)),
                ("effect", s(py, effect)),
                ("message", s(py, message)),
            ],
        ),
        E::ReconcileFailed {
            unit,
            step,
            effect,
            message,
        } => (
            "ReconcileFailed",
            vec![
                ("unit", s(py, unit)),
                ("step", step.into_py(py)),
                ("effect", s(py, effect)),
                ("message", s(py, message)),
            ],
        ),
        E::CompensationFailed {
            unit,
            step,
            effect,
            message,
        } => (
            "CompensationFailed",
            vec![
                ("unit", s(py, unit)),
                ("step", step.into_py(py)),
                ("effect", s(py, effect)),
                ("message", s(py, message)),
            ],
        ),
        E::LeftInDoubt {
            unit,
            step,
            effect,
            key,
            message,
        } => (
            "LeftInDoubt",
            vec![
                ("unit", s(py, unit)),
                ("step", step.into_py(py)),
                ("effect", s(py, effect)),
                ("key", s(py, key)),
                ("message", s(py, message)),
            ],
        ),
        E::RetriesExhausted {
            unit,
            step,
            effect,
            key,
            attempts,
            message,
        } => (
            "RetriesExhausted",
            vec![
                ("unit", s(py, unit)),
                ("step", step.into_py(py)),
                ("effect", s(py, effect)),
                ("key", s(py, key)),
                ("attempts", attempts.into_py(py)),
                ("message", s(py, message)),
            ],
        ),
        E::AbortRequested { unit, by, reason } => (
            "AbortRequested",
            vec![
                ("unit", s(py, unit)),
                ("by", s(py, by)),
                ("reason", s(py, reason)),
            ],
        ),
        E::OperatorRefused { unit, reason } => (
            "OperatorRefused",
            vec![("unit", s(py, unit)), ("reason", s(py, reason))],
        ),
        E::InvalidCall { unit, .. } => ("InvalidCall", vec![("unit", s(py, unit))]),
        E::InvalidOptions(_) => ("InvalidOptions", vec![]),
        _ => ("Error", vec![]),
    };
    attrs.push(("retryable", retryable.into_py(py)));
    make_err(py, class, msg, attrs)
}

/// Maps a log error to its Python exception (same message).
fn log_err(py: Python<'_>, e: &agentwal::log::Error, msg: String) -> PyErr {
    use agentwal::log::Error as L;
    let retryable = !e.is_permanent();
    let (class, mut attrs): (&str, Vec<(&str, PyObject)>) = match e {
        L::Io { op, path, source } => (
            "JournalIOError",
            vec![
                ("op", s(py, op)),
                ("path", path.display().to_string().into_py(py)),
                ("errno", source.raw_os_error().into_py(py)),
            ],
        ),
        L::Locked { dir, pid } => (
            "Locked",
            vec![
                ("dir", dir.display().to_string().into_py(py)),
                ("pid", pid.into_py(py)),
            ],
        ),
        L::Corruption {
            segment,
            offset,
            reason,
        } => (
            "Corrupt",
            vec![
                ("segment", segment.display().to_string().into_py(py)),
                ("offset", offset.into_py(py)),
                ("reason", s(py, reason)),
            ],
        ),
        L::BadMagic { .. } | L::UnsupportedVersion { .. } => ("Corrupt", vec![]),
        L::NotAJournal { .. } => ("NotAJournal", vec![]),
        L::RecordTooLarge { size, limit } => (
            "PayloadTooLarge",
            vec![("size", size.into_py(py)), ("limit", limit.into_py(py))],
        ),
        L::Poisoned { cause } => ("Poisoned", vec![("cause", s(py, cause))]),
        L::InvalidOptions(_) => ("InvalidOptions", vec![]),
        _ => ("Error", vec![]),
    };
    attrs.push(("retryable", retryable.into_py(py)));
    make_err(py, class, msg, attrs)
}

/// Maps a work-queue error to its Python exception (same message).
fn queue_err(py: Python<'_>, e: queue::Error) -> PyErr {
    use queue::Error as Q;
    let msg = e.to_string();
    let (class, attrs): (&str, Vec<(&str, PyObject)>) = match &e {
        Q::Log(l) => return log_err(py, l, msg),
        Q::Draining => ("Draining", vec![]),
        Q::NotFound { .. } => ("NotFound", vec![]),
        Q::LeaseLost { .. } => ("LeaseLost", vec![]),
        Q::BadRecord { .. } => ("Corrupt", vec![]),
        Q::InvalidArgument(_) => ("InvalidOptions", vec![]),
        _ => ("Error", vec![]),
    };
    make_err(py, class, msg, attrs)
}

fn inspect_err(py: Python<'_>, e: agentwal::inspect::Error) -> PyErr {
    make_err(py, "Error", e.to_string(), vec![])
}

// ---------------------------------------------------------------------------
// JSON <-> Python
// ---------------------------------------------------------------------------

/// serde_json refuses to read values nested deeper than 128 levels: a result
/// nested deeper would be recorded but never replay.
const MAX_DEPTH: usize = 100;

/// Converts a Python value to JSON, or explains (TypeError / ValueError) why
/// it would not survive the journal. `what` names the value in messages.
fn to_json(v: &Bound<'_, PyAny>, what: &str) -> PyResult<Value> {
    to_json_at(v, what, 0)
}

fn to_json_at(v: &Bound<'_, PyAny>, what: &str, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "{what} is nested deeper than {MAX_DEPTH} levels (or is circular); it would not replay"
        )));
    }
    if v.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = v.downcast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if v.is_instance_of::<PyInt>() {
        if let Ok(i) = v.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = v.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(PyValueError::new_err(format!(
            "{what} contains the integer {v}, outside the 64-bit range JSON numbers replay exactly; store it as a string"
        )));
    }
    if let Ok(f) = v.downcast::<PyFloat>() {
        let x = f.value();
        return Number::from_f64(x).map(Value::Number).ok_or_else(|| {
            PyValueError::new_err(format!(
                "{what} contains the float {x}, which JSON cannot represent; it would not replay"
            ))
        });
    }
    if let Ok(st) = v.downcast::<PyString>() {
        return Ok(Value::String(st.to_cow()?.into_owned()));
    }
    if let Ok(d) = v.downcast::<PyDict>() {
        let mut m = Map::with_capacity(d.len());
        for (k, val) in d.iter() {
            let Ok(ks) = k.downcast::<PyString>() else {
                return Err(PyTypeError::new_err(format!(
                    "{what} has a dict key of type {}; JSON object keys must be str",
                    type_name(&k)
                )));
            };
            m.insert(
                ks.to_cow()?.into_owned(),
                to_json_at(&val, what, depth + 1)?,
            );
        }
        return Ok(Value::Object(m));
    }
    if let Ok(l) = v.downcast::<PyList>() {
        let mut out = Vec::with_capacity(l.len());
        for x in l.iter() {
            out.push(to_json_at(&x, what, depth + 1)?);
        }
        return Ok(Value::Array(out));
    }
    if let Ok(t) = v.downcast::<PyTuple>() {
        let mut out = Vec::with_capacity(t.len());
        for x in t.iter() {
            out.push(to_json_at(&x, what, depth + 1)?);
        }
        return Ok(Value::Array(out));
    }
    // pydantic v2 models (and anything shaped like them).
    if v.hasattr("model_dump")? {
        let kwargs = PyDict::new_bound(v.py());
        kwargs.set_item("mode", "json")?;
        let dumped = v.call_method("model_dump", (), Some(&kwargs))?;
        return to_json_at(&dumped, what, depth + 1);
    }
    Err(PyTypeError::new_err(format!(
        "{what} is of type {}, which is not JSON-able: use dict, list, tuple, str, int, float, bool, None or a pydantic model (model_dump)",
        type_name(v)
    )))
}

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .qualname()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Converts recorded JSON back to Python.
fn to_py(py: Python<'_>, v: &Value) -> PyObject {
    match v {
        Value::Null => py.None(),
        Value::Bool(b) => b.into_py(py),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_py(py)
            } else if let Some(u) = n.as_u64() {
                u.into_py(py)
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_py(py)
            }
        }
        Value::String(st) => st.into_py(py),
        Value::Array(a) => PyList::new_bound(py, a.iter().map(|x| to_py(py, x))).into_py(py),
        Value::Object(m) => {
            let d = PyDict::new_bound(py);
            for (k, x) in m {
                // Setting a str key on a fresh dict cannot fail.
                let _ = d.set_item(k, to_py(py, x));
            }
            d.into_py(py)
        }
    }
}

/// Serializes any `Serialize` report to a Python value via JSON.
fn report_to_py<T: serde::Serialize>(py: Python<'_>, v: &T) -> PyResult<PyObject> {
    let value = serde_json::to_value(v).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(to_py(py, &value))
}

// ---------------------------------------------------------------------------
// Calling Python from inside a Rust journal call
// ---------------------------------------------------------------------------

/// The payload of the unwind that carries a Python `BaseException` (not an
/// `Exception`) out of a Rust call without recording anything.
struct Interrupted;

/// Where a Python error raised inside a Rust call waits to be re-raised.
type Slot = Arc<Mutex<Option<PyErr>>>;

/// Runs `f` with the GIL released, catching the `Interrupted` unwind (and any
/// other panic, which becomes a Python `agentwal.Error` instead of crossing
/// the FFI boundary).
fn without_gil<T, F>(py: Python<'_>, f: F) -> Result<T, Unwound>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    py.allow_threads(|| catch_unwind(AssertUnwindSafe(f)))
        .map_err(|p| {
            if p.is::<Interrupted>() {
                Unwound::Interrupted
            } else {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Unwound::Panic(msg)
            }
        })
}

/// What a call on a unit handle found.
enum Access<R> {
    /// Another call holds the handle (an effect is running).
    Busy,
    /// The handle was committed, rolled back or abandoned.
    Closed,
    /// The call ran.
    Done(R),
}

enum Unwound {
    Interrupted,
    Panic(String),
}

impl Unwound {
    fn into_err(self, py: Python<'_>, slot: &Slot) -> PyErr {
        match self {
            Unwound::Interrupted => slot.lock().take().unwrap_or_else(|| {
                make_err(
                    py,
                    "Error",
                    "interrupted without an exception".into(),
                    vec![],
                )
            }),
            Unwound::Panic(m) => make_err(
                py,
                "Error",
                format!("internal error (a bug in agentwal, please report it): {m}"),
                vec![],
            ),
        }
    }
}

/// Calls `f(args)` with the GIL. An `Exception` is stored in `slot` and
/// returned as a [`StepError`] of its class (see [`classify`]); a
/// `BaseException` that is not an `Exception` is stored and unwinds (nothing
/// is recorded).
fn call_py(slot: &Slot, f: &PyObject, arg: PyObject) -> Result<PyObject, StepError> {
    let r = Python::with_gil(|py| match f.call1(py, (arg,)) {
        Ok(v) => Ok(v),
        Err(e) => {
            let is_exception = e.is_instance_of::<pyo3::exceptions::PyException>(py);
            let err = is_exception.then(|| {
                let (class, after) = classify(py, &e);
                let se = StepError::new(class, describe(py, &e));
                match after {
                    Some(a) => se.retry_after(a),
                    None => se,
                }
            });
            *slot.lock() = Some(e);
            Err(err)
        }
    });
    match r {
        Ok(v) => Ok(v),
        Err(Some(e)) => Err(e),
        Err(None) => resume_unwind(Box::new(Interrupted)),
    }
}

/// The class of a Python exception raised by a step: an
/// `agentwal.StepFailure` says it (`Transient`, `DidNotHappen`, `Unsure`,
/// `Permanent`, with an optional `retry_after`); an `OSError` (timeouts and
/// connection errors included) is transient, as `std::io::Error` is in Rust;
/// anything else is permanent.
fn classify(py: Python<'_>, e: &PyErr) -> (ErrorClass, Option<Duration>) {
    let v = e.value_bound(py);
    let step_failure = PyModule::import_bound(py, "agentwal._types")
        .and_then(|m| m.getattr("StepFailure"))
        .ok();
    if let Some(cls) = step_failure {
        if v.is_instance(&cls).unwrap_or(false) {
            let class = v
                .getattr("error_class")
                .and_then(|c| c.extract::<String>())
                .unwrap_or_default();
            let after = v
                .getattr("retry_after")
                .and_then(|a| a.extract::<Option<f64>>())
                .ok()
                .flatten()
                .filter(|a| a.is_finite() && *a >= 0.0)
                .map(|a| Duration::from_secs_f64(a.min(86_400.0)));
            let class = match class.as_str() {
                "transient" => ErrorClass::Transient,
                "not_happened" => ErrorClass::NotHappened,
                "in_doubt" => ErrorClass::InDoubt,
                _ => ErrorClass::Permanent,
            };
            return (class, after);
        }
    }
    if e.is_instance_of::<pyo3::exceptions::PyOSError>(py) {
        return (ErrorClass::Transient, None);
    }
    (ErrorClass::Permanent, None)
}

/// Reads an `agentwal.Retry` (any object with its attributes).
fn retry_policy(r: &Bound<'_, PyAny>) -> PyResult<RetryPolicy> {
    let secs = |name: &str| -> PyResult<Option<Duration>> {
        let v: Option<f64> = r.getattr(name)?.extract()?;
        match v {
            None => Ok(None),
            Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(Duration::from_secs_f64(x))),
            Some(x) => Err(PyValueError::new_err(format!(
                "Retry.{name} must be a non-negative number of seconds, not {x}"
            ))),
        }
    };
    let max_attempts: u32 = r.getattr("max_attempts")?.extract()?;
    if max_attempts == 0 {
        return Err(PyValueError::new_err(
            "Retry.max_attempts must be at least 1",
        ));
    }
    let mut p = RetryPolicy::exponential(max_attempts);
    let initial = secs("initial_backoff")?.unwrap_or(p.initial_backoff);
    let max = secs("max_backoff")?.unwrap_or(p.max_backoff);
    p = p
        .backoff(initial, max)
        .multiplier(r.getattr("multiplier")?.extract()?)
        .jitter(r.getattr("jitter")?.extract()?);
    if let Some(d) = secs("deadline")? {
        p = p.deadline(d);
    }
    let on: String = r.getattr("on_exhausted")?.extract()?;
    p = p.on_exhausted(match on.as_str() {
        "record_failure" => OnExhausted::RecordFailure,
        "leave_in_doubt" => OnExhausted::LeaveInDoubt,
        other => {
            return Err(PyValueError::new_err(format!(
                "Retry.on_exhausted must be \"record_failure\" or \"leave_in_doubt\", not {other:?}"
            )))
        }
    });
    Ok(p)
}

/// `TypeName: message`, as Python prints an exception's last line.
fn describe(py: Python<'_>, e: &PyErr) -> String {
    let name = e
        .get_type_bound(py)
        .qualname()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let text = e.value_bound(py).str().map(|s| s.to_string());
    match text {
        Ok(t) if !t.is_empty() => format!("{name}: {t}"),
        _ => name,
    }
}

// ---------------------------------------------------------------------------
// Journal
// ---------------------------------------------------------------------------

/// The Rust journal (`agentwal::journal::Journal`). Use `agentwal.Journal`.
#[pyclass(module = "agentwal._agentwal", frozen)]
struct RawJournal {
    inner: Mutex<Option<Journal>>,
    dir: PathBuf,
}

impl RawJournal {
    fn get(&self, py: Python<'_>) -> PyResult<Journal> {
        self.inner.lock().clone().ok_or_else(|| {
            make_err(
                py,
                "InvalidCall",
                format!("journal {} is closed", self.dir.display()),
                vec![],
            )
        })
    }
}

fn unit_state_str(s: UnitState) -> &'static str {
    s.as_str()
}

fn parse_state(py: Python<'_>, s: Option<&str>) -> PyResult<Option<UnitState>> {
    match s {
        None => Ok(None),
        Some("committed") => Ok(Some(UnitState::Committed)),
        Some("aborted") => Ok(Some(UnitState::Aborted)),
        Some("incomplete") => Ok(Some(UnitState::Incomplete)),
        Some(o) => Err(make_err(
            py,
            "InvalidOptions",
            format!("unknown unit state {o:?}: use committed, aborted or incomplete"),
            vec![],
        )),
    }
}

#[pymethods]
impl RawJournal {
    #[new]
    #[pyo3(signature = (path, *, max_payload_bytes=None, max_record_bytes=None, segment_size=None,
        compact_every_records=None, compact_every_bytes=None, retain_keys=None, retain_seconds=None,
        retain_forever=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        max_payload_bytes: Option<u64>,
        max_record_bytes: Option<u64>,
        segment_size: Option<u64>,
        compact_every_records: Option<u64>,
        compact_every_bytes: Option<u64>,
        retain_keys: Option<usize>,
        retain_seconds: Option<f64>,
        retain_forever: bool,
    ) -> PyResult<Self> {
        let mut opts = JournalOptions::default();
        if let Some(p) = max_payload_bytes {
            opts.max_payload_bytes = p;
            // Keep the record limit above the payload limit (records add a
            // little framing) unless the caller sets both.
            if max_record_bytes.is_none() && opts.log.max_record_bytes <= p {
                opts.log.max_record_bytes = p.saturating_add(1 << 20);
            }
        }
        if let Some(r) = max_record_bytes {
            opts.log.max_record_bytes = r;
        }
        if let Some(sz) = segment_size {
            opts.log.segment_size = sz;
        }
        if compact_every_records.is_some() || compact_every_bytes.is_some() {
            opts.auto_compact.every_records = compact_every_records;
            opts.auto_compact.every_bytes = compact_every_bytes;
        }
        if retain_keys.is_some() || retain_seconds.is_some() {
            let max_age = match retain_seconds {
                Some(x) if !(x.is_finite() && x >= 0.0) => {
                    return Err(make_err(
                        py,
                        "InvalidOptions",
                        format!("retain_seconds must be a non-negative number, not {x}"),
                        vec![],
                    ))
                }
                Some(x) => Some(Duration::from_secs_f64(x)),
                None => None,
            };
            opts.retention.max_keys = retain_keys;
            opts.retention.max_age = max_age;
        }
        if retain_forever {
            opts.retention.max_keys = None;
            opts.retention.max_age = None;
        }
        let dir = path.clone();
        let j = py
            .allow_threads(move || Journal::open(&path, opts))
            .map_err(|e| journal_err(py, e))?;
        Ok(RawJournal {
            inner: Mutex::new(Some(j)),
            dir,
        })
    }

    /// The journal directory.
    #[getter]
    fn path(&self) -> String {
        self.dir.display().to_string()
    }

    /// True once `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.lock().is_none()
    }

    /// Begins (or resumes) a unit. `payload` must be JSON-able.
    fn begin(
        &self,
        py: Python<'_>,
        id: String,
        kind: String,
        payload: &Bound<'_, PyAny>,
    ) -> PyResult<RawUnit> {
        let j = self.get(py)?;
        let value = to_json(payload, &format!("payload of unit {id:?}"))?;
        let unit = py
            .allow_threads(|| j.begin(&id, &kind, &value))
            .map_err(|e| journal_err(py, e))?;
        let resumed = unit.is_resumed();
        Ok(RawUnit {
            inner: Mutex::new(Some(unit)),
            id,
            resumed,
        })
    }

    /// "committed", "aborted", "incomplete" or None.
    fn unit_state(&self, py: Python<'_>, id: &str) -> PyResult<Option<&'static str>> {
        Ok(self.get(py)?.unit_state(id).map(unit_state_str))
    }

    /// The first index in `range(start, stop)` whose unit `prefix + index`
    /// (zero-padded to `width`) is not committed; `stop` if all are.
    #[pyo3(signature = (prefix, start, stop, width=0))]
    fn first_uncommitted(
        &self,
        py: Python<'_>,
        prefix: &str,
        start: u64,
        stop: u64,
        width: usize,
    ) -> PyResult<u64> {
        let j = self.get(py)?;
        Ok(py.allow_threads(|| {
            (start..stop)
                .find(|i| {
                    j.unit_state(&format!("{prefix}{i:0width$}")) != Some(UnitState::Committed)
                })
                .unwrap_or(stop)
        }))
    }

    /// Incomplete units now (dicts), by begin LSN.
    fn incomplete_units(&self, py: Python<'_>) -> PyResult<PyObject> {
        let v = self.get(py)?.incomplete_units();
        report_to_py(py, &v)
    }

    /// The idempotency key's entry in the key index, or None.
    fn key_status(&self, py: Python<'_>, key: &str) -> PyResult<PyObject> {
        let v = self.get(py)?.key_status(key);
        report_to_py(py, &v)
    }

    /// What replay found at open (dict).
    fn replay_report(&self, py: Python<'_>) -> PyResult<PyObject> {
        let r = self.get(py)?.replay_report().clone();
        let d = PyDict::new_bound(py);
        d.set_item("snapshot_lsn", r.snapshot_lsn)?;
        d.set_item("records_replayed", r.records_replayed)?;
        d.set_item("committed", r.committed)?;
        d.set_item("aborted", r.aborted)?;
        d.set_item("incomplete", report_to_py(py, &r.incomplete)?)?;
        d.set_item("keys", r.keys)?;
        Ok(d.into_py(py))
    }

    /// Counters (dict).
    fn stats(&self, py: Python<'_>) -> PyResult<PyObject> {
        let st = self.get(py)?.stats();
        let d = PyDict::new_bound(py);
        d.set_item("live_units", st.live_units)?;
        d.set_item("keys", st.keys)?;
        d.set_item("finished_ids", st.finished_ids)?;
        d.set_item("committed", st.committed)?;
        d.set_item("aborted", st.aborted)?;
        d.set_item("records_since_compaction", st.records_since_compaction)?;
        d.set_item("bytes_since_compaction", st.bytes_since_compaction)?;
        d.set_item("compactions", st.compactions)?;
        d.set_item("disk_bytes", st.disk_bytes)?;
        d.set_item("last_auto_compact_error", st.last_auto_compact_error)?;
        Ok(d.into_py(py))
    }

    /// `wal-inspect summary --json`, as a dict (read-only view of the files).
    fn summary(&self, py: Python<'_>) -> PyResult<PyObject> {
        let dir = self.dir.clone();
        let s = py
            .allow_threads(|| {
                agentwal::inspect::Inspection::open(&dir)
                    .map(|insp| agentwal::inspect::summary::summary(&insp))
            })
            .map_err(|e| inspect_err(py, e))?;
        report_to_py(py, &s)
    }

    /// `wal-inspect units --json`, as a list of dicts.
    #[pyo3(signature = (state=None))]
    fn units(&self, py: Python<'_>, state: Option<&str>) -> PyResult<PyObject> {
        let state = parse_state(py, state)?;
        let dir = self.dir.clone();
        let rows = py
            .allow_threads(|| {
                let insp = agentwal::inspect::Inspection::open(&dir)?;
                let view = agentwal::inspect::units::load_view(&insp)?;
                Ok::<_, agentwal::inspect::Error>(agentwal::inspect::units::units(&view, state))
            })
            .map_err(|e| inspect_err(py, e))?;
        report_to_py(py, &rows)
    }

    /// `wal-inspect show UNIT --json`, as a dict.
    fn show(&self, py: Python<'_>, id: String) -> PyResult<PyObject> {
        let dir = self.dir.clone();
        let detail = py
            .allow_threads(|| {
                let insp = agentwal::inspect::Inspection::open(&dir)?;
                let view = agentwal::inspect::units::load_view(&insp)?;
                agentwal::inspect::units::show(&insp, &view, &id)
            })
            .map_err(|e| inspect_err(py, e))?;
        report_to_py(py, &detail)
    }

    /// Records an operator's decision for in-doubt step `seq` of unit `id`.
    #[pyo3(signature = (id, seq, happened, result=None, error=None))]
    fn resolve_in_doubt(
        &self,
        py: Python<'_>,
        id: String,
        seq: u32,
        happened: bool,
        result: Option<&Bound<'_, PyAny>>,
        error: Option<String>,
    ) -> PyResult<u64> {
        let j = self.get(py)?;
        let outcome = if happened {
            let value = match result {
                Some(r) => to_json(r, "operator result")?,
                None => Value::Null,
            };
            Outcome::Ok { value }
        } else {
            Outcome::Err {
                message: error.unwrap_or_else(|| "did not happen (operator)".into()),
            }
        };
        py.allow_threads(|| j.resolve_in_doubt(&id, seq, outcome))
            .map_err(|e| journal_err(py, e))
    }

    /// An operator's attributed resolution of in-doubt step `step` of unit
    /// `id` (`wal-inspect resolve`): it happened (with `result`), or it did
    /// not (the unit may run it again with the same key). Returns what changed.
    #[pyo3(signature = (id, step, happened, result=None, by="python".to_string(), reason=String::new()))]
    #[allow(clippy::too_many_arguments)]
    fn operator_resolve(
        &self,
        py: Python<'_>,
        id: String,
        step: u32,
        happened: bool,
        result: Option<&Bound<'_, PyAny>>,
        by: String,
        reason: String,
    ) -> PyResult<String> {
        let j = self.get(py)?;
        let resolution = if happened {
            Resolution::Happened(match result {
                Some(r) => Some(to_json(r, "operator result")?),
                None => None,
            })
        } else {
            Resolution::NotHappened
        };
        py.allow_threads(|| j.resolve(&id, step, resolution, &by, &reason))
            .map_err(|e| journal_err(py, e))
    }

    /// Records an operator's abort of incomplete unit `id` (`wal-inspect
    /// abort`); returns what changed.
    #[pyo3(signature = (id, by="python".to_string(), reason=String::new()))]
    fn request_abort(
        &self,
        py: Python<'_>,
        id: String,
        by: String,
        reason: String,
    ) -> PyResult<String> {
        let j = self.get(py)?;
        py.allow_threads(|| j.request_abort(&id, &by, &reason))
            .map_err(|e| journal_err(py, e))
    }

    /// Records a human decision for approval `name` of unit `id`
    /// (`wal-inspect approve`); returns what changed.
    #[pyo3(signature = (id, name, approved, by="python".to_string(), reason=String::new()))]
    fn decide_approval(
        &self,
        py: Python<'_>,
        id: String,
        name: String,
        approved: bool,
        by: String,
        reason: String,
    ) -> PyResult<String> {
        let j = self.get(py)?;
        py.allow_threads(|| j.decide_approval(&id, &name, approved, &by, &reason))
            .map_err(|e| journal_err(py, e))
    }

    /// Rolls back incomplete unit `id`, calling `compensate(Compensation)`
    /// for its compensable effects in reverse order.
    fn rollback(
        &self,
        py: Python<'_>,
        id: String,
        reason: String,
        compensate: PyObject,
    ) -> PyResult<PyObject> {
        let j = self.get(py)?;
        let slot: Slot = Arc::default();
        let sl = slot.clone();
        let r = without_gil(py, || {
            j.rollback(&id, &reason, |c| {
                call_py(&sl, &compensate, compensation_obj(c)).map(|_| ())
            })
        });
        finish_rollback(py, r, &slot)
    }

    /// Writes a snapshot and drops the segments it covers (dict report).
    fn compact(&self, py: Python<'_>) -> PyResult<PyObject> {
        let j = self.get(py)?;
        let r = py
            .allow_threads(|| j.compact())
            .map_err(|e| journal_err(py, e))?;
        let d = PyDict::new_bound(py);
        d.set_item("snapshot_lsn", r.snapshot_lsn)?;
        d.set_item("snapshot_bytes", r.snapshot_bytes)?;
        d.set_item("segments_removed", r.segments_removed)?;
        d.set_item("retired", r.retired)?;
        Ok(d.into_py(py))
    }

    /// Makes everything appended so far durable; returns the durable LSN.
    fn sync(&self, py: Python<'_>) -> PyResult<u64> {
        let j = self.get(py)?;
        py.allow_threads(|| j.sync())
            .map_err(|e| journal_err(py, e))
    }

    /// Syncs and closes (idempotent). Open units keep the directory locked
    /// until they are dropped.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let j = self.inner.lock().take();
        match j {
            Some(j) => py
                .allow_threads(|| j.close())
                .map_err(|e| journal_err(py, e)),
            None => Ok(()),
        }
    }
}

fn compensation_obj(c: &Compensation) -> PyObject {
    Python::with_gil(|py| {
        Py::new(
            py,
            RawCompensation {
                unit: c.unit.clone(),
                seq: c.seq,
                effect: c.effect.clone(),
                effect_key: c.effect_key.clone(),
                key: c.key.clone(),
                result: c.result.as_ref().map(|v| to_py(py, v)),
                effect_in_doubt: c.effect_in_doubt,
                retry: c.retry,
            },
        )
        .map(|o| o.into_py(py))
        .unwrap_or_else(|_| py.None())
    })
}

fn finish_rollback(
    py: Python<'_>,
    r: Result<journal::Result<journal::RollbackReport>, Unwound>,
    slot: &Slot,
) -> PyResult<PyObject> {
    match r {
        Err(u) => Err(u.into_err(py, slot)),
        Ok(Err(e)) => {
            let err = journal_err(py, e);
            if let Some(cause) = slot.lock().take() {
                err.set_cause(py, Some(cause));
            }
            Err(err)
        }
        Ok(Ok(rep)) => {
            let d = PyDict::new_bound(py);
            d.set_item("compensated", rep.compensated)?;
            d.set_item("already_compensated", rep.already_compensated)?;
            d.set_item("abort_lsn", rep.abort_lsn)?;
            Ok(d.into_py(py))
        }
    }
}

// ---------------------------------------------------------------------------
// Units and effects
// ---------------------------------------------------------------------------

/// What an effect's code (and a reconcile probe) learns about the effect.
#[pyclass(module = "agentwal._agentwal", name = "EffectCtx", frozen)]
struct RawCtx {
    /// The unit id.
    #[pyo3(get)]
    unit: String,
    /// The effect name.
    #[pyo3(get)]
    name: String,
    /// The step (position in the unit, from 0).
    #[pyo3(get)]
    seq: u32,
    /// The idempotency key: give it to the receiver so it can de-duplicate.
    #[pyo3(get)]
    key: String,
    /// "first", or "retry" when an earlier attempt with this key may have happened.
    #[pyo3(get)]
    attempt: &'static str,
    /// The attempt number under the effect's retry policy (1 for the first;
    /// counted durably, so attempts before a crash count).
    #[pyo3(get)]
    attempt_number: u32,
}

#[pymethods]
impl RawCtx {
    /// True when an earlier attempt with the same key may have happened.
    #[getter]
    fn is_retry(&self) -> bool {
        self.attempt == "retry"
    }

    fn __repr__(&self) -> String {
        format!(
            "EffectCtx(unit={:?}, name={:?}, seq={}, key={:?}, attempt={:?}, attempt_number={})",
            self.unit, self.name, self.seq, self.key, self.attempt, self.attempt_number
        )
    }
}

fn ctx_obj(ctx: &EffectCtx) -> PyObject {
    Python::with_gil(|py| {
        Py::new(
            py,
            RawCtx {
                unit: ctx.unit().to_string(),
                name: ctx.name().to_string(),
                seq: ctx.seq(),
                key: ctx.key().to_string(),
                attempt: match ctx.attempt() {
                    Attempt::First => "first",
                    Attempt::Retry => "retry",
                },
                attempt_number: ctx.attempt_number(),
            },
        )
        .map(|o| o.into_py(py))
        .unwrap_or_else(|_| py.None())
    })
}

/// One compensation to run during a rollback.
#[pyclass(module = "agentwal._agentwal", name = "Compensation", frozen)]
struct RawCompensation {
    /// The unit.
    #[pyo3(get)]
    unit: String,
    /// The step being compensated.
    #[pyo3(get)]
    seq: u32,
    /// The effect's name.
    #[pyo3(get)]
    effect: String,
    /// The effect's idempotency key.
    #[pyo3(get)]
    effect_key: String,
    /// The compensation's own idempotency key.
    #[pyo3(get)]
    key: String,
    /// The effect's recorded result (None if it is in doubt).
    #[pyo3(get)]
    result: Option<PyObject>,
    /// True when the effect is in doubt: it may not have happened at all.
    #[pyo3(get)]
    effect_in_doubt: bool,
    /// True when this compensation may already have run: de-duplicate by `key`.
    #[pyo3(get)]
    retry: bool,
}

#[pymethods]
impl RawCompensation {
    fn __repr__(&self) -> String {
        format!(
            "Compensation(unit={:?}, seq={}, effect={:?}, key={:?}, effect_in_doubt={}, retry={})",
            self.unit, self.seq, self.effect, self.key, self.effect_in_doubt, self.retry
        )
    }
}

/// An open unit (`agentwal::journal::Unit`). Use `agentwal.Journal.unit`.
#[pyclass(module = "agentwal._agentwal", frozen)]
struct RawUnit {
    inner: Mutex<Option<Unit>>,
    id: String,
    resumed: bool,
}

impl RawUnit {
    /// Runs `f` on the handle without waiting for it: the handle is held for
    /// the whole of a `run` (the Rust unit is borrowed mutably while the
    /// effect's Python code runs), so waiting here from inside that code, or
    /// from the event loop an async step runs on, would deadlock.
    fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Option<Unit>) -> R + Send,
    ) -> PyResult<R> {
        py.allow_threads(|| self.inner.try_lock().map(|mut g| f(&mut g)))
            .ok_or_else(|| self.busy_err(py))
    }

    fn busy_err(&self, py: Python<'_>) -> PyErr {
        make_err(
            py,
            "InvalidCall",
            format!(
                "unit {:?} is running an effect right now: a unit is used by one thread or task at a time, and not from inside its own effects",
                self.id
            ),
            vec![("unit", s(py, &self.id))],
        )
    }

    fn closed_err(&self, py: Python<'_>) -> PyErr {
        make_err(
            py,
            "InvalidCall",
            format!(
                "unit {:?}: this handle is closed (committed, rolled back or abandoned)",
                self.id
            ),
            vec![("unit", s(py, &self.id))],
        )
    }
}

/// How a probe answered, decoded from Python.
fn probe_answer(py: Python<'_>, v: &Bound<'_, PyAny>) -> PyResult<Probe<Value>> {
    let types = PyModule::import_bound(py, "agentwal._types")?;
    if v.is_instance(&types.getattr("NotHappened")?)? {
        return Ok(Probe::NotHappened);
    }
    if v.is_instance(&types.getattr("Happened")?)? {
        let value = v.getattr("value")?;
        return Ok(Probe::Happened(to_json(&value, "reconcile probe result")?));
    }
    Err(PyTypeError::new_err(format!(
        "a reconcile probe must return agentwal.Happened(result) or agentwal.NOT_HAPPENED, not {}",
        type_name(v)
    )))
}

#[pymethods]
impl RawUnit {
    /// The unit id.
    #[getter]
    fn id(&self) -> &str {
        &self.id
    }

    /// True when the unit was found incomplete in the journal (resume).
    #[getter]
    fn resumed(&self) -> bool {
        self.resumed
    }

    /// True once committed, rolled back or abandoned.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        // Busy running an effect means open.
        py.allow_threads(|| self.inner.try_lock().is_some_and(|g| g.is_none()))
    }

    /// The step the next `run` will use.
    fn next_step(&self, py: Python<'_>) -> PyResult<u32> {
        self.with(py, |g| g.as_ref().map(|u| u.next_step()))?
            .ok_or_else(|| self.closed_err(py))
    }

    /// Effects recorded for this unit so far (replayed or new).
    fn recorded_effects(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |g| g.as_ref().map(|u| u.recorded_effects()))?
            .ok_or_else(|| self.closed_err(py))
    }

    /// Status of step `seq`: not_started, in_doubt, completed, failed, compensated.
    fn effect_status(&self, py: Python<'_>, seq: u32) -> PyResult<String> {
        let st = self
            .with(py, |g| g.as_ref().map(|u| u.effect_status(seq)))?
            .ok_or_else(|| self.closed_err(py))?;
        Ok(format!("{st:?}")
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let lower = c.to_ascii_lowercase();
                if c.is_ascii_uppercase() && i > 0 {
                    vec!['_', lower]
                } else {
                    vec![lower]
                }
            })
            .collect())
    }

    /// The payload recorded by the unit's begin record.
    fn payload(&self, py: Python<'_>) -> PyResult<PyObject> {
        let v: Value = self
            .with(py, |g| g.as_ref().map(|u| u.payload()))?
            .ok_or_else(|| self.closed_err(py))?
            .map_err(|e| journal_err(py, e))?;
        Ok(to_py(py, &v))
    }

    /// The state saved by the latest checkpoint, or None.
    fn last_checkpoint(&self, py: Python<'_>) -> PyResult<PyObject> {
        let v: Option<Value> = self
            .with(py, |g| g.as_ref().map(|u| u.last_checkpoint()))?
            .ok_or_else(|| self.closed_err(py))?
            .map_err(|e| journal_err(py, e))?;
        Ok(v.map_or_else(|| py.None(), |v| to_py(py, &v)))
    }

    /// Saves JSON-able `state` durably; returns its LSN.
    fn checkpoint(&self, py: Python<'_>, state: &Bound<'_, PyAny>) -> PyResult<u64> {
        let value = to_json(state, &format!("checkpoint of unit {:?}", self.id))?;
        self.with(py, |g| g.as_mut().map(|u| u.checkpoint(&value)))?
            .ok_or_else(|| self.closed_err(py))?
            .map_err(|e| journal_err(py, e))
    }

    /// Runs (or replays) one effect. See `agentwal.Unit.run`.
    #[pyo3(signature = (name, f, policy, key=None, compensable=false, probe=None, retry=None))]
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        py: Python<'_>,
        name: String,
        f: PyObject,
        policy: &str,
        key: Option<String>,
        compensable: bool,
        probe: Option<PyObject>,
        retry: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyObject> {
        let slot: Slot = Arc::default();
        let mut effect: Effect<'_, Value> = match policy {
            "retry_same_key" => Effect::retry_same_key(name.clone()),
            "never_repeat" => Effect::never_repeat(name.clone()),
            "reconcile" => {
                let Some(probe) = probe else {
                    return Err(PyTypeError::new_err(format!(
                        "effect {name:?}: policy \"reconcile\" needs probe=callable(ctx) returning agentwal.Happened(result) or agentwal.NOT_HAPPENED"
                    )));
                };
                let sl = slot.clone();
                Effect::reconcile(name.clone(), move |ctx: &EffectCtx| {
                    let answer = call_py(&sl, &probe, ctx_obj(ctx)).map_err(|e| e.to_string())?;
                    Python::with_gil(|py| {
                        probe_answer(py, answer.bind(py)).map_err(|e| {
                            let text = describe(py, &e);
                            *sl.lock() = Some(e);
                            text
                        })
                    })
                })
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "effect {name:?}: unknown policy {other:?}; use \"retry_same_key\", \"never_repeat\" or \"reconcile\""
                )))
            }
        };
        if let Some(k) = key {
            effect = effect.key(k);
        }
        if compensable {
            effect = effect.compensable();
        }
        if let Some(r) = retry {
            effect = effect.retry(retry_policy(r)?);
        }
        let sl = slot.clone();
        let converting = Arc::new(AtomicBool::new(false));
        let conv = converting.clone();
        let what = format!("result of effect {name:?}");
        let r = without_gil(py, || {
            let Some(mut g) = self.inner.try_lock() else {
                return Access::Busy;
            };
            let Some(unit) = g.as_mut() else {
                return Access::Closed;
            };
            Access::Done(unit.run(effect, |ctx| {
                let out = call_py(&sl, &f, ctx_obj(ctx))?;
                // Convert before anything is recorded: a value that would
                // not replay is refused (TypeError / ValueError) and the
                // effect is recorded as failed with that reason, since it ran.
                Python::with_gil(|py| {
                    to_json(out.bind(py), &what).map_err(|e| {
                        let text = describe(py, &e);
                        conv.store(true, Ordering::SeqCst);
                        *sl.lock() = Some(e);
                        StepError::permanent(text)
                    })
                })
            }))
        });
        match r {
            Err(u) => {
                // Interrupted by a BaseException: nothing was recorded for
                // the step; this handle no longer matches the journal, so it
                // is closed (the unit is resumable).
                self.inner.lock().take();
                Err(u.into_err(py, &slot))
            }
            Ok(Access::Busy) => Err(self.busy_err(py)),
            Ok(Access::Closed) => Err(self.closed_err(py)),
            Ok(Access::Done(Ok(v))) => Ok(to_py(py, &v)),
            Ok(Access::Done(Err(e))) => {
                if matches!(
                    e,
                    journal::Error::LeftInDoubt { .. } | journal::Error::RetriesExhausted { .. }
                ) {
                    // The step stays in doubt: the unit can only be resumed
                    // (or rolled back), so this handle is closed.
                    self.inner.lock().take();
                }
                let from_py = slot.lock().take();
                match (&e, from_py) {
                    // The effect returned a value that is not JSON-able
                    // (recorded as failed): raise the TypeError itself.
                    (journal::Error::EffectFailed { .. }, Some(pe))
                        if converting.load(Ordering::SeqCst) =>
                    {
                        Err(pe)
                    }
                    (_, Some(pe)) => {
                        let err = journal_err(py, e);
                        err.set_cause(py, Some(pe));
                        Err(err)
                    }
                    (_, None) => Err(journal_err(py, e)),
                }
            }
        }
    }

    /// Asks for (or reads) human approval `name`: a dict with `state`
    /// ("pending", "approved", "rejected") and, once decided, `by`,
    /// `reason`, `at_ms`. Never blocks for the decision.
    #[pyo3(signature = (name, payload=None))]
    fn approval(
        &self,
        py: Python<'_>,
        name: String,
        payload: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyObject> {
        let value = match payload {
            Some(p) => to_json(p, &format!("payload of approval {name:?}"))?,
            None => Value::Null,
        };
        let a = self
            .with(py, |g| g.as_mut().map(|u| u.approval(&name, &value)))?
            .ok_or_else(|| self.closed_err(py))?
            .map_err(|e| journal_err(py, e))?;
        let d = PyDict::new_bound(py);
        match a {
            Approval::Pending => d.set_item("state", "pending")?,
            Approval::Approved { by, reason, at_ms } => {
                d.set_item("state", "approved")?;
                d.set_item("by", by)?;
                d.set_item("reason", reason)?;
                d.set_item("at_ms", at_ms)?;
            }
            Approval::Rejected { by, reason, at_ms } => {
                d.set_item("state", "rejected")?;
                d.set_item("by", by)?;
                d.set_item("reason", reason)?;
                d.set_item("at_ms", at_ms)?;
            }
        }
        Ok(d.into_py(py))
    }

    /// Commits the unit durably; returns the commit LSN.
    fn commit(&self, py: Python<'_>) -> PyResult<u64> {
        // `Unit::commit` consumes the unit: the handle is closed whatever
        // the outcome (a refused commit leaves the unit incomplete).
        let r = self.with(py, |g| g.take().map(|u| u.commit()))?;
        r.ok_or_else(|| self.closed_err(py))?
            .map_err(|e| journal_err(py, e))
    }

    /// Rolls the unit back, calling `compensate(Compensation)` for its
    /// compensable effects in reverse order; dict report.
    fn rollback(&self, py: Python<'_>, reason: String, compensate: PyObject) -> PyResult<PyObject> {
        let slot: Slot = Arc::default();
        let sl = slot.clone();
        let r = without_gil(py, || {
            let Some(mut g) = self.inner.try_lock() else {
                return Access::Busy;
            };
            let Some(u) = g.take() else {
                return Access::Closed;
            };
            // The handle is released before the compensations run.
            drop(g);
            Access::Done(u.rollback(&reason, |c| {
                call_py(&sl, &compensate, compensation_obj(c)).map(|_| ())
            }))
        });
        let r = match r {
            Ok(Access::Busy) => return Err(self.busy_err(py)),
            Ok(Access::Closed) => return Err(self.closed_err(py)),
            Ok(Access::Done(x)) => Ok(x),
            Err(u) => Err(u),
        };
        finish_rollback(py, r, &slot)
    }

    /// Closes the handle without committing: the unit stays incomplete and
    /// resumable (as after a crash). Idempotent.
    fn abandon(&self, py: Python<'_>) -> PyResult<()> {
        let u = self.with(py, |g| g.take())?;
        drop(u);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Work queue
// ---------------------------------------------------------------------------

/// A claimed work-queue item.
#[pyclass(module = "agentwal._agentwal", name = "Claimed", frozen)]
struct RawClaimed {
    inner: Claimed,
}

#[pymethods]
impl RawClaimed {
    /// The item's id.
    #[getter]
    fn id(&self) -> u64 {
        self.inner.id
    }
    /// Which attempt this is (1 for the first claim).
    #[getter]
    fn attempt(&self) -> u32 {
        self.inner.attempt
    }
    /// The worker holding it.
    #[getter]
    fn worker(&self) -> &str {
        &self.inner.worker
    }
    /// The payload bytes as enqueued.
    #[getter]
    fn payload(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.inner.payload)
    }
    /// The payload decoded from JSON.
    fn json(&self, py: Python<'_>) -> PyResult<PyObject> {
        let v: Value = self.inner.json().map_err(|e| queue_err(py, e))?;
        Ok(to_py(py, &v))
    }
    fn __repr__(&self) -> String {
        format!(
            "Claimed(id={}, attempt={}, worker={:?}, payload=<{} bytes>)",
            self.inner.id,
            self.inner.attempt,
            self.inner.worker,
            self.inner.payload.len()
        )
    }
}

/// The durable work queue (`agentwal::queue::WorkQueue`). Use `agentwal.WorkQueue`.
#[pyclass(module = "agentwal._agentwal", frozen)]
struct RawQueue {
    inner: Mutex<Option<WorkQueue>>,
}

impl RawQueue {
    fn get(&self, py: Python<'_>) -> PyResult<WorkQueue> {
        self.inner
            .lock()
            .clone()
            .ok_or_else(|| make_err(py, "InvalidCall", "work queue is closed".into(), vec![]))
    }
}

fn payload_bytes(v: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = v.extract::<Vec<u8>>() {
        if !v.is_instance_of::<PyList>() {
            return Ok(b);
        }
    }
    let value = to_json(v, "work item payload")?;
    serde_json::to_vec(&value).map_err(|e| PyValueError::new_err(e.to_string()))
}

#[pymethods]
impl RawQueue {
    #[new]
    #[pyo3(signature = (journal_dir, *, max_attempts=None, lease_seconds=None))]
    fn new(
        py: Python<'_>,
        journal_dir: PathBuf,
        max_attempts: Option<u32>,
        lease_seconds: Option<f64>,
    ) -> PyResult<Self> {
        let mut opts = QueueOptions::default();
        if let Some(m) = max_attempts {
            opts.max_attempts = m;
        }
        if let Some(l) = lease_seconds {
            if !(l.is_finite() && l > 0.0) {
                return Err(make_err(
                    py,
                    "InvalidOptions",
                    format!("lease_seconds must be a positive number, not {l}"),
                    vec![],
                ));
            }
            opts.lease = Duration::from_secs_f64(l);
        }
        let q = py
            .allow_threads(|| WorkQueue::open(&journal_dir, opts))
            .map_err(|e| queue_err(py, e))?;
        Ok(RawQueue {
            inner: Mutex::new(Some(q)),
        })
    }

    /// Enqueues bytes (as is) or a JSON-able value; returns the item id.
    #[pyo3(signature = (payload, delay_seconds=0.0))]
    fn enqueue(
        &self,
        py: Python<'_>,
        payload: &Bound<'_, PyAny>,
        delay_seconds: f64,
    ) -> PyResult<u64> {
        let q = self.get(py)?;
        let bytes = payload_bytes(payload)?;
        if !(delay_seconds.is_finite() && delay_seconds >= 0.0) {
            return Err(PyValueError::new_err("delay_seconds must be >= 0"));
        }
        let delay = Duration::from_secs_f64(delay_seconds);
        py.allow_threads(|| q.enqueue_after(&bytes, delay))
            .map_err(|e| queue_err(py, e))
    }

    /// Claims the next pending item for `worker`, or None.
    fn claim(&self, py: Python<'_>, worker: String) -> PyResult<Option<RawClaimed>> {
        let q = self.get(py)?;
        let c = py
            .allow_threads(|| q.claim(&worker))
            .map_err(|e| queue_err(py, e))?;
        Ok(c.map(|inner| RawClaimed { inner }))
    }

    /// Acknowledges a claimed item (done, durable).
    fn ack(&self, py: Python<'_>, claimed: &RawClaimed) -> PyResult<()> {
        let q = self.get(py)?;
        py.allow_threads(|| q.ack(&claimed.inner))
            .map_err(|e| queue_err(py, e))
    }

    /// Gives a claimed item back: "retry" or "dead_lettered".
    #[pyo3(signature = (claimed, error, delay_seconds=0.0))]
    fn nack(
        &self,
        py: Python<'_>,
        claimed: &RawClaimed,
        error: String,
        delay_seconds: f64,
    ) -> PyResult<&'static str> {
        let q = self.get(py)?;
        if !(delay_seconds.is_finite() && delay_seconds >= 0.0) {
            return Err(PyValueError::new_err("delay_seconds must be >= 0"));
        }
        let delay = Duration::from_secs_f64(delay_seconds);
        let o = py
            .allow_threads(|| q.nack(&claimed.inner, delay, &error))
            .map_err(|e| queue_err(py, e))?;
        Ok(match o {
            NackOutcome::Retry => "retry",
            NackOutcome::DeadLettered => "dead_lettered",
        })
    }

    /// Stops intake and waits up to `timeout_seconds` for in-flight items.
    fn drain(&self, py: Python<'_>, timeout_seconds: f64) -> PyResult<PyObject> {
        let q = self.get(py)?;
        let t = Duration::from_secs_f64(timeout_seconds.max(0.0));
        let r = py
            .allow_threads(|| q.drain(t))
            .map_err(|e| queue_err(py, e))?;
        let d = PyDict::new_bound(py);
        d.set_item("finished", r.finished)?;
        d.set_item("released", r.released)?;
        d.set_item("pending", r.pending)?;
        d.set_item("timed_out", r.timed_out)?;
        Ok(d.into_py(py))
    }

    /// Counts by state (dict).
    fn stats(&self, py: Python<'_>) -> PyResult<PyObject> {
        let q = self.get(py)?;
        report_to_py(py, &q.stats())
    }

    /// Every item (list of dicts).
    fn items(&self, py: Python<'_>) -> PyResult<PyObject> {
        let q = self.get(py)?;
        let d = PyList::empty_bound(py);
        for it in q.list() {
            let x = PyDict::new_bound(py);
            x.set_item("id", it.id)?;
            x.set_item("state", format!("{:?}", it.state).to_lowercase())?;
            x.set_item("attempts", it.attempts)?;
            x.set_item("worker", it.worker)?;
            x.set_item("last_error", it.last_error)?;
            d.append(x)?;
        }
        Ok(d.into_py(py))
    }

    /// Syncs and closes (idempotent).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let q = self.inner.lock().take();
        match q {
            Some(q) => py.allow_threads(|| q.close()).map_err(|e| queue_err(py, e)),
            None => Ok(()),
        }
    }
}

/// The idempotency key the journal derives for step `seq` of effect `name`
/// in unit `unit` (when no explicit key is given).
#[pyfunction]
fn default_key(unit: &str, name: &str, seq: u32) -> String {
    journal::default_key(unit, name, seq)
}

/// The native module.
#[pymodule]
fn _agentwal(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RawJournal>()?;
    m.add_class::<RawUnit>()?;
    m.add_class::<RawCtx>()?;
    m.add_class::<RawCompensation>()?;
    m.add_class::<RawQueue>()?;
    m.add_class::<RawClaimed>()?;
    m.add_function(wrap_pyfunction!(default_key, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
