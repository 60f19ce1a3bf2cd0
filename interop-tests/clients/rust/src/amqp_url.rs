//! The parts of an `amqp://user:password@host:port/vhost?heartbeat=N` URL, percent-decoded as
//! the AMQP URI spec says (`/%2f` is the vhost `/`). For clients that take a host, port,
//! credentials and vhost rather than a URL (amqprs without its `urispec` feature).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
    /// `?heartbeat=N`, if given.
    pub heartbeat: Option<u16>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct UrlError(String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AMQP URL: {}", self.0)
    }
}

impl std::error::Error for UrlError {}

impl AmqpUrl {
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let rest = url
            .strip_prefix("amqp://")
            .ok_or_else(|| UrlError(format!("{url:?} is not amqp:// (TLS is not built in)")))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((n, p)) => (decode(n)?, decode(p)?),
                None => (decode(u)?, "guest".to_owned()),
            },
            None => ("guest".to_owned(), "guest".to_owned()),
        };
        // `[::1]:5672` keeps its colons inside the brackets.
        let colon = match hostport.rfind(']') {
            Some(close) => hostport[close..].find(':').map(|i| close + i),
            None => hostport.rfind(':'),
        };
        let (host, port) = match colon {
            Some(i) => {
                let p = &hostport[i + 1..];
                let port = p.parse().map_err(|_| UrlError(format!("bad port {p:?}")))?;
                (&hostport[..i], port)
            }
            None => (hostport, 5672),
        };
        if host.is_empty() {
            return Err(UrlError(format!("no host in {url:?}")));
        }
        let vhost = match path {
            None => "/".to_owned(),
            Some(p) => decode(p)?,
        };
        let mut heartbeat = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            if let Some(v) = pair.strip_prefix("heartbeat=") {
                heartbeat = Some(v.parse().map_err(|_| UrlError(format!("bad {pair:?}")))?);
            }
        }
        Ok(AmqpUrl {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            user,
            password,
            vhost,
            heartbeat,
        })
    }
}

/// Percent-decoding of one URL component.
fn decode(s: &str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| UrlError(format!("bad percent-encoding in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError(format!("{s:?} is not UTF-8 once decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_run_sh_exports() {
        let u = AmqpUrl::parse("amqp://guest:guest@127.0.0.1:40123/%2f").unwrap();
        assert_eq!(
            u,
            AmqpUrl {
                host: "127.0.0.1".into(),
                port: 40123,
                user: "guest".into(),
                password: "guest".into(),
                vhost: "/".into(),
                heartbeat: None,
            }
        );
    }

    #[test]
    fn defaults_credentials_encoding_and_heartbeat() {
        let u = AmqpUrl::parse("amqp://localhost").unwrap();
        assert_eq!(
            (u.port, u.vhost.as_str(), u.user.as_str()),
            (5672, "/", "guest")
        );
        let u = AmqpUrl::parse("amqp://a%40b:p%3Aw@h:1/v%2Fx?heartbeat=2").unwrap();
        assert_eq!(
            (u.user.as_str(), u.password.as_str(), u.vhost.as_str()),
            ("a@b", "p:w", "v/x")
        );
        assert_eq!(u.heartbeat, Some(2));
    }

    #[test]
    fn refuses_what_it_cannot_connect_to() {
        let u = AmqpUrl::parse("amqp://[::1]:5673").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 5673));
        assert!(AmqpUrl::parse("amqps://h/").is_err());
        assert!(AmqpUrl::parse("amqp://h:port/").is_err());
        assert!(AmqpUrl::parse("amqp:///").is_err());
        assert!(AmqpUrl::parse("amqp://h/%zz").is_err());
    }
}
