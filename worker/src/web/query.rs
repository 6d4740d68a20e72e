//! Query strings of the HTTP API (`?after=alice&limit=100`): percent-decoded, each parameter
//! known to the endpoint and given at most once, numbers checked, and every refusal a 400 that
//! names the parameter.

use super::error::ApiError;
use http::request::Parts;
use percent_encoding::percent_decode_str;
use std::collections::BTreeMap;
use std::str::FromStr;

/// The parameters of one request.
pub struct Query(BTreeMap<String, String>);

impl Query {
    /// The query of `parts`, whose parameters must be among `known`.
    pub fn parse(parts: &Parts, known: &[&str]) -> Result<Query, ApiError> {
        Query::parse_str(parts.uri.query().unwrap_or(""), known)
    }

    pub fn parse_str(query: &str, known: &[&str]) -> Result<Query, ApiError> {
        let mut params = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| {
                        ApiError::bad_request(format!("{pair:?} is not UTF-8 once decoded"))
                    })
            };
            let (k, v) = (decode(k)?, decode(v)?);
            if !known.contains(&k.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {k:?}: this endpoint takes {}",
                    known.join(", ")
                )));
            }
            if params.insert(k.clone(), v).is_some() {
                return Err(ApiError::bad_request(format!(
                    "query parameter {k:?} is given twice"
                )));
            }
        }
        Ok(Query(params))
    }

    /// The value of `name`, if given and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `name` as a whole number, if given.
    pub fn number<T: FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "query parameter {name}={v:?} is not a whole number in range"
                    ))
                })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoding, unknown and repeated parameters, and numbers. Fails if a bad query were
    /// silently ignored.
    #[test]
    fn parses_and_refuses() {
        let q = Query::parse_str("after=a%2Eb+c&limit=5", &["after", "limit"]).unwrap();
        assert_eq!(q.get("after"), Some("a.b c"));
        assert_eq!(q.number::<u32>("limit").unwrap(), Some(5));
        assert_eq!(q.number::<u32>("nothing").unwrap(), None);
        let e = |s: &str| {
            Query::parse_str(s, &["after", "limit"])
                .err()
                .unwrap()
                .message
        };
        assert!(e("x=1").contains("unknown query parameter \"x\""));
        assert!(e("limit=1&limit=2").contains("twice"));
        let q = Query::parse_str("limit=-1", &["limit"]).unwrap();
        assert!(
            q.number::<u32>("limit")
                .unwrap_err()
                .message
                .contains("limit=\"-1\"")
        );
    }
}
