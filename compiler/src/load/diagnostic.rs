//! What the loader reports: a [`Diagnostic`] names source, object and field; a [`FieldError`] is
//! the field-level half of one, before the loader knows the source and object.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational (a skipped kind).
    Note,
    /// Something was adjusted or looks wrong, but the object is kept.
    Warning,
    /// The object was rejected and is not enforced.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// A problem with the input, located as precisely as possible.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// File path, `-` for stdin, or another origin name.
    pub source: String,
    /// `Kind namespace/name`, or `document N` when the object has no usable name.
    pub object: Option<String>,
    /// JSON path of the field, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.severity, self.source)?;
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A field-level problem before it is attached to a source and object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

pub(super) fn ferr(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

pub(super) type FResult<T> = Result<T, FieldError>;
