//! FNV-1a, 64 bits, as hex: the toolkit's change detector (container
//! labels, the gateway's configuration versions, image tags by content, the
//! checksums in rendered files). It is the same on every run, machine and
//! toolchain, unlike `std`'s hasher, which is all a change detector needs;
//! it is not a cryptographic hash, and nothing relies on it being one.

#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    /// Feeds `bytes` as they are.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// Feeds one field and a NUL after it, so that the fields ("ab", "c")
    /// and ("a", "bc") give different digests.
    pub fn field(&mut self, text: &str) -> &mut Self {
        self.bytes(text.as_bytes()).bytes(&[0])
    }

    /// The 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The digest of `bytes`, in hex.
pub fn hex(bytes: &[u8]) -> String {
    Fnv1a::default().bytes(bytes).hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_fnv1a_and_fields_are_separated() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(hex(b""), "cbf29ce484222325");
        assert_eq!(hex(b"a"), "af63dc4c8601ec8c");
        assert_ne!(Fnv1a::default().field("ab").field("c").hex(), Fnv1a::default().field("a").field("bc").hex());
    }
}
