//! Users and SASL mechanisms (PLAIN, AMQPLAIN).
//!
//! As in RabbitMQ, the default user `guest` may only log in from a loopback address unless
//! the operator allows it explicitly.

use std::collections::HashMap;
use std::net::IpAddr;

use thiserror::Error;

pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("unsupported authentication mechanism '{0}'")]
    UnknownMechanism(String),
    #[error("malformed {mechanism} response")]
    Malformed { mechanism: &'static str },
    #[error("user '{user}' - invalid credentials")]
    InvalidCredentials { user: String },
    #[error("user '{user}' can only connect via localhost")]
    LoopbackOnly { user: String },
}

#[derive(Debug, Clone)]
struct User {
    password: String,
    loopback_only: bool,
}

/// The users that may log in.
#[derive(Debug, Clone)]
pub struct UserStore {
    users: HashMap<String, User>,
}

impl UserStore {
    /// RabbitMQ's out-of-the-box user: guest/guest, loopback only unless `guest_remote`.
    pub fn with_default_user(guest_remote: bool) -> Self {
        let mut users = HashMap::new();
        users.insert(
            "guest".to_string(),
            User {
                password: "guest".to_string(),
                loopback_only: !guest_remote,
            },
        );
        Self { users }
    }

    /// Checks a `connection.start-ok` response; returns the user name.
    pub fn authenticate(
        &self,
        mechanism: &str,
        response: &[u8],
        peer: IpAddr,
    ) -> Result<String, AuthError> {
        let (user, password) = match mechanism {
            "PLAIN" => parse_plain(response)?,
            "AMQPLAIN" => parse_amqplain(response)?,
            other => return Err(AuthError::UnknownMechanism(other.to_string())),
        };
        let Some(known) = self.users.get(&user) else {
            return Err(AuthError::InvalidCredentials { user });
        };
        if known.password != password {
            return Err(AuthError::InvalidCredentials { user });
        }
        if known.loopback_only && !peer.is_loopback() {
            return Err(AuthError::LoopbackOnly { user });
        }
        Ok(user)
    }
}

/// `[authzid] NUL authcid NUL passwd` (RFC 4616).
fn parse_plain(response: &[u8]) -> Result<(String, String), AuthError> {
    let malformed = AuthError::Malformed { mechanism: "PLAIN" };
    let mut parts = response.split(|b| *b == 0);
    let (Some(_authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed);
    };
    Ok((
        String::from_utf8(user.to_vec()).map_err(|_| malformed.clone())?,
        String::from_utf8(password.to_vec()).map_err(|_| malformed)?,
    ))
}

/// A field table without its length prefix holding `LOGIN` and `PASSWORD`.
fn parse_amqplain(mut buf: &[u8]) -> Result<(String, String), AuthError> {
    let malformed = || AuthError::Malformed {
        mechanism: "AMQPLAIN",
    };
    let mut login = None;
    let mut password = None;
    while !buf.is_empty() {
        let klen = usize::from(buf[0]);
        let key = buf.get(1..1 + klen).ok_or_else(malformed)?;
        buf = &buf[1 + klen..];
        let (&kind, rest) = buf.split_first().ok_or_else(malformed)?;
        let (value, rest) = match kind {
            b'S' => {
                let len = rest.get(..4).ok_or_else(malformed)?;
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                let v = rest.get(4..4 + len).ok_or_else(malformed)?;
                (v, &rest[4 + len..])
            }
            b's' => {
                let len = usize::from(*rest.first().ok_or_else(malformed)?);
                let v = rest.get(1..1 + len).ok_or_else(malformed)?;
                (v, &rest[1 + len..])
            }
            _ => return Err(malformed()),
        };
        let value = String::from_utf8(value.to_vec()).map_err(|_| malformed())?;
        match key {
            b"LOGIN" => login = Some(value),
            b"PASSWORD" => password = Some(value),
            _ => {}
        }
        buf = rest;
    }
    Ok((
        login.ok_or_else(malformed)?,
        password.ok_or_else(malformed)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    #[test]
    fn plain_with_and_without_authzid_is_accepted() {
        let users = UserStore::with_default_user(false);
        assert_eq!(
            users.authenticate("PLAIN", b"\0guest\0guest", loopback()),
            Ok("guest".into())
        );
        assert_eq!(
            users.authenticate("PLAIN", b"guest\0guest\0guest", loopback()),
            Ok("guest".into())
        );
    }

    #[test]
    fn wrong_password_is_refused() {
        let users = UserStore::with_default_user(false);
        assert!(matches!(
            users.authenticate("PLAIN", b"\0guest\0nope", loopback()),
            Err(AuthError::InvalidCredentials { .. })
        ));
    }

    #[test]
    fn guest_is_refused_from_a_remote_address() {
        let users = UserStore::with_default_user(false);
        assert!(matches!(
            users.authenticate("PLAIN", b"\0guest\0guest", IpAddr::from([10, 1, 2, 3])),
            Err(AuthError::LoopbackOnly { .. })
        ));
        let users = UserStore::with_default_user(true);
        assert!(
            users
                .authenticate("PLAIN", b"\0guest\0guest", IpAddr::from([10, 1, 2, 3]))
                .is_ok()
        );
    }

    #[test]
    fn amqplain_table_is_parsed() {
        let mut r = Vec::new();
        for (k, v) in [("LOGIN", "guest"), ("PASSWORD", "guest")] {
            r.push(k.len() as u8);
            r.extend_from_slice(k.as_bytes());
            r.push(b'S');
            r.extend_from_slice(&(v.len() as u32).to_be_bytes());
            r.extend_from_slice(v.as_bytes());
        }
        let users = UserStore::with_default_user(false);
        assert_eq!(
            users.authenticate("AMQPLAIN", &r, loopback()),
            Ok("guest".into())
        );
        assert!(users.authenticate("AMQPLAIN", &r[..5], loopback()).is_err());
    }

    #[test]
    fn malformed_plain_and_unknown_mechanism_are_errors() {
        let users = UserStore::with_default_user(false);
        assert!(users.authenticate("PLAIN", b"guest", loopback()).is_err());
        assert!(matches!(
            users.authenticate("EXTERNAL", b"", loopback()),
            Err(AuthError::UnknownMechanism(_))
        ));
    }
}
