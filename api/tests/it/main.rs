//! Integration tests of the trust core through its public API: the attack list, root
//! rotation, and property tests on arbitrary input.

mod attacks;
mod fixtures;
mod props;
mod rotation;
