//! Names of the Redis keys that hold the deployment state replicas share.
//!
//! Every key starts with the data plane's `redis.key_prefix` and carries its subject in a hash
//! tag (`{...}`), so each script touches one key and one slot on Redis Cluster.

/// The hash with one deployment's shared state: minute counts (`m`, `rq`, `tk`, `fl`), breaker
/// (`until`, `probe`), and per replica in-flight counts (`if:<replica>`) and latency averages
/// (`lat:<replica>`).
pub fn deployment_state(prefix: &str, deployment_id: &str) -> String {
    format!("{prefix}:fleet:{{{deployment_id}}}")
}

/// The capped stream of one `prefix_affinity` model's prefix-index entries.
pub fn prefix_index(prefix: &str, model: &str) -> String {
    format!("{prefix}:pfx:{{{model}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_subject_as_a_hash_tag() {
        assert_eq!(deployment_state("sb", "d1"), "sb:fleet:{d1}");
        assert_eq!(prefix_index("sb", "llama"), "sb:pfx:{llama}");
    }
}
