//! Client post ids: chosen once per post and sent with every retry of it, so a post that timed
//! out or whose worker died commits once (docs/semantics.md §3, "idempotent posts").

use std::time::{SystemTime, UNIX_EPOCH};

/// A fresh id: 32 lowercase hex characters, the time in milliseconds (48 bits) and then 80
/// random bits (the masters accept up to 64 bytes; 80 bits make a collision between one user's
/// posts of one millisecond practically impossible).
///
/// The time comes first so that one user's ids sort in the order they were made: the masters
/// keep a unique index of each author's post ids, and a new id then lands at the end of its
/// author's range, on a page the last post wrote already. A random id lands on a random page of
/// the whole index, which each commit writes again (about twice the bytes written per post,
/// `bench/RESULTS.md`) and which, once the index outgrows the cache, has to be read from disk.
pub fn new_client_post_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis()) as u64
        & ((1 << 48) - 1);
    let random = rand::random::<u128>() >> 48;
    format!("{ms:012x}{random:020x}")
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
        // Of the same millisecond or not, they differ after the time.
        assert_ne!(a[12..], b[12..]);
    }

    /// An id made later sorts after one made earlier, and starts with the time it was made.
    #[test]
    fn ids_sort_in_the_order_they_were_made() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let a = new_client_post_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_client_post_id();
        assert!(a < b, "{a} then {b}");
        let made = u64::from_str_radix(&a[..12], 16).unwrap();
        assert!(
            made >= before && made < before + 1000,
            "{made} against {before}"
        );
    }
}
