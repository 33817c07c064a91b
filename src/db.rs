//! Connections to the OpenMRS database, and the session settings every ferry session uses.
//!
//! Every connection ferry opens runs in UTC (`time_zone = '+00:00'`) so that TIMESTAMP
//! columns read and write the same instant on every server, whatever the servers' own
//! time zones are, and in utf8mb4 so that any text round-trips.

use mysql_async::prelude::*;
use mysql_async::{Conn, Opts};

use crate::config::ConfigError;

/// Errors talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to the database at {target}: {}\nhint: check that MariaDB is running and that `database` in the config file is right", root_cause(.source))]
    Connect {
        target: String,
        source: mysql_async::Error,
    },
    #[error("database error while {doing}: {source}")]
    Query {
        doing: String,
        source: mysql_async::Error,
    },
}

/// The innermost cause of a driver error, lowercased (the driver wraps an i/o error in
/// two layers that each repeat "Input/output error").
fn root_cause(e: &mysql_async::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let text = cause.to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

impl DbError {
    /// Wraps a driver error with what ferry was doing at the time.
    pub fn query(doing: impl Into<String>) -> impl FnOnce(mysql_async::Error) -> DbError {
        let doing = doing.into();
        move |source| DbError::Query { doing, source }
    }
}

/// A parsed and validated `mysql://` URL.
#[derive(Debug, Clone)]
pub struct DbUrl {
    opts: Opts,
    /// The database (schema) name the URL names.
    pub database: String,
}

impl DbUrl {
    /// Parses `mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?socket=PATH]`.
    pub fn parse(url: &str) -> Result<DbUrl, ConfigError> {
        let bad = |why: String| ConfigError::DbUrl {
            url: redact(url),
            why,
        };
        if !url.starts_with("mysql://") {
            return Err(bad("it must start with mysql://".into()));
        }
        let opts = Opts::from_url(url).map_err(|e| bad(e.to_string()))?;
        let database = opts
            .db_name()
            .filter(|d| !d.is_empty())
            .ok_or_else(|| bad("it names no database".into()))?
            .to_string();
        Ok(DbUrl { opts, database })
    }

    /// The URL with any password replaced, for messages.
    pub fn display(&self) -> String {
        format!(
            "{}@{}:{}/{}",
            self.opts.user().unwrap_or(""),
            self.opts.ip_or_hostname(),
            self.opts.tcp_port(),
            self.database
        )
    }

    /// Opens one connection with ferry's session settings.
    pub async fn connect(&self) -> Result<Conn, DbError> {
        // Import and export run many statements of a few fixed shapes: keep them all
        // prepared (the driver's default keeps 32).
        let opts = mysql_async::OptsBuilder::from_opts(self.opts.clone()).stmt_cache_size(1024);
        let mut conn = Conn::new(opts).await.map_err(|source| DbError::Connect {
            target: self.display(),
            source,
        })?;
        conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
            .await
            .map_err(DbError::query("setting up the session"))?;
        Ok(conn)
    }
}

/// Hides a password in a URL so it never reaches a log or an error message.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Quotes an identifier for MariaDB (`name` → `` `name` ``).
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Quotes a string literal for MariaDB, for generated DDL (trigger bodies) where
/// parameters cannot be used.
pub fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Appends `v` as an SQL literal for a statement sent as text (the session has no
/// NO_BACKSLASH_ESCAPES). Numbers are written so the server reads back the same bits:
/// floats as their exact double in shortest exponent form (a FLOAT column takes the
/// double exactly), text as an escaped string, other bytes as an escaped `_binary`
/// string (no conversion, same length as the bytes).
pub fn push_literal(out: &mut Vec<u8>, v: &mysql_async::Value) {
    use mysql_async::Value as V;
    use std::io::Write;
    match v {
        V::NULL => out.extend_from_slice(b"NULL"),
        V::Int(i) => {
            let _ = write!(out, "{i}");
        }
        V::UInt(u) => {
            let _ = write!(out, "{u}");
        }
        V::Float(f) => {
            let _ = write!(out, "{:e}", *f as f64);
        }
        V::Double(d) => {
            let _ = write!(out, "{d:e}");
        }
        V::Bytes(b) => push_bytes_literal(out, b),
        other => out.extend_from_slice(other.as_sql(false).as_bytes()),
    }
}

/// Appends bytes as an escaped string literal (`_binary` when they are not UTF-8), as
/// [`push_literal`] writes a `Bytes` value.
pub fn push_bytes_literal(out: &mut Vec<u8>, b: &[u8]) {
    if std::str::from_utf8(b).is_err() {
        out.extend_from_slice(b"_binary");
    }
    out.push(b'\'');
    for &c in b {
        match c {
            0 => out.extend_from_slice(b"\\0"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0x1a => out.extend_from_slice(b"\\Z"),
            b'\'' | b'"' | b'\\' => {
                out.push(b'\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out.push(b'\'');
}

/// `(a, b), (c, d)` as SQL literals, for multi-row statements sent as text. Only for
/// values whose text form is exact (numbers, text, dates): binary data goes through
/// prepared statements.
pub fn values_sql(rows: &[Vec<mysql_async::Value>]) -> String {
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for (j, v) in row.iter().enumerate() {
            if j > 0 {
                out.push_str(", ");
            }
            out.push_str(&v.as_sql(false));
        }
        out.push(')');
    }
    out
}

/// Takes the named lock `<name><database>` for this session, waiting at most `wait_s`
/// seconds; whether it was taken. Held until [`release_lock`] or the session ends.
pub async fn take_lock(conn: &mut Conn, name: &str, wait_s: u32) -> Result<bool, DbError> {
    let got: Option<i64> = conn
        .exec_first("SELECT GET_LOCK(CONCAT(?, DATABASE()), ?)", (name, wait_s))
        .await
        .map_err(DbError::query(format!("taking the {name} lock")))?;
    Ok(got == Some(1))
}

/// Releases a lock [`take_lock`] took (errors ignored: the session's end releases it too).
pub async fn release_lock(conn: &mut Conn, name: &str) {
    let _ = conn
        .exec_drop("DO RELEASE_LOCK(CONCAT(?, DATABASE()))", (name,))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_and_keep_bits() {
        use mysql_async::Value as V;
        let lit = |v: V| {
            let mut out = Vec::new();
            push_literal(&mut out, &v);
            out
        };
        assert_eq!(
            lit(V::Bytes(b"it's \\ \0\n".to_vec())),
            b"'it\\'s \\\\ \\0\\n'"
        );
        assert_eq!(lit(V::Bytes(vec![0xff, b'\''])), b"_binary'\xff\\''");
        assert_eq!(lit(V::Double(-0.0)), b"-0e0");
        assert_eq!(lit(V::Double(0.1 + 0.2)), b"3.0000000000000004e-1");
        assert_eq!(lit(V::Float(0.1)), b"1.0000000149011612e-1");
        assert_eq!(lit(V::UInt(u64::MAX)), b"18446744073709551615");
        assert_eq!(lit(V::NULL), b"NULL");
    }

    #[test]
    fn parses_urls() {
        let u = DbUrl::parse("mysql://root@127.0.0.1:3307/openmrs").unwrap();
        assert_eq!(u.database, "openmrs");
        assert!(DbUrl::parse("postgres://x@y/z").is_err());
        assert!(DbUrl::parse("mysql://root@127.0.0.1:3307").is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("mysql://u:secret@h/d"), "mysql://u:***@h/d");
        assert_eq!(redact("mysql://u@h/d"), "mysql://u@h/d");
    }

    #[test]
    fn quotes() {
        assert_eq!(ident("a`b"), "`a``b`");
        assert_eq!(literal("it's\\"), "'it''s\\\\'");
    }
}
