//! [`Bytes`]: binary payloads that cross the process boundary as one block.

use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize};

/// An owned byte buffer that travels between processes as one block (postcard
/// `bytes`: a length and a `memcpy`), where a `Vec<u8>` goes element by element —
/// about thirty times slower for large payloads. Python's `bytes`, for procpool.
///
/// The wire format is the same as `Vec<u8>`'s, so a task may take `Vec<u8>` while the
/// caller sends `Bytes`, and the other way round.
///
/// ```
/// use procpool_core::Bytes;
/// let b = Bytes::from(vec![1u8, 2, 3]);
/// assert_eq!(b.len(), 3);
/// let v: Vec<u8> = b.into();
/// assert_eq!(v, [1, 2, 3]);
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl Bytes {
    /// An empty buffer.
    pub fn new() -> Self {
        Bytes(Vec::new())
    }

    /// The bytes, as a `Vec`.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Deref for Bytes {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes(v.to_vec())
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(b: Bytes) -> Self {
        b.0
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_wire_format_as_vec_u8() {
        let v: Vec<u8> = (0..=255).collect();
        let as_bytes = postcard::to_stdvec(&Bytes(v.clone())).unwrap();
        assert_eq!(as_bytes, postcard::to_stdvec(&v).unwrap());
        assert_eq!(
            postcard::from_bytes::<Bytes>(&as_bytes).unwrap(),
            Bytes(v.clone())
        );
        assert_eq!(postcard::from_bytes::<Vec<u8>>(&as_bytes).unwrap(), v);
        assert_eq!(format!("{:?}", Bytes(v)), "Bytes(256 bytes)");
    }
}
