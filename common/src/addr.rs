//! Parsing of master address lists: `default_master_address` and the scripts' `[addr]` argument,
//! comma-separated `host:port`, where a bare host means the configured API ports on that host.

/// Splits `list` into `host:port` endpoints. A bare host (no port) expands to that host with
/// each of `default_ports`.
pub fn parse_master_list(list: &str, default_ports: &[u16]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => {
                port.parse::<u16>()
                    .map_err(|_| format!("bad port in master address {part:?}"))?;
                out.push(part.to_string());
            }
            Some(_) => return Err(format!("master address {part:?} has no host")),
            None => {
                if default_ports.is_empty() {
                    return Err(format!("master address {part:?} has no port"));
                }
                out.extend(default_ports.iter().map(|p| format!("{part}:{p}")));
            }
        }
    }
    if out.is_empty() {
        return Err("no master address given".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full endpoints pass through; a bare host expands to the default ports; junk is refused.
    #[test]
    fn parses_lists() {
        assert_eq!(
            parse_master_list("a:1, b:2", &[]).unwrap(),
            vec!["a:1".to_string(), "b:2".to_string()]
        );
        assert_eq!(
            parse_master_list("10.0.0.1", &[7001, 7002]).unwrap(),
            vec!["10.0.0.1:7001".to_string(), "10.0.0.1:7002".to_string()]
        );
        assert!(parse_master_list("a:x", &[]).is_err());
        assert!(parse_master_list(" , ", &[1]).is_err());
    }
}
