//! Client post ids: chosen once per post and sent with every retry of it, so a post that timed
//! out or whose worker died commits once (docs/semantics.md §3, "idempotent posts").

/// A fresh id: 128 random bits as 32 lowercase hex characters (the masters accept up to 64
/// bytes; 128 bits make a collision between one user's posts practically impossible).
pub fn new_client_post_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids are 32 hex characters and differ from one post to the next.
    #[test]
    fn ids_are_random_hex() {
        let a = new_client_post_id();
        let b = new_client_post_id();
        assert_eq!(a.len(), 32);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }
}
