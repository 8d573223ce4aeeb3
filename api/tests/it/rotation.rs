//! Root rotation: root N+1 needs a threshold of root N's keys and of its own, and version N+1.

use slipway_api::error::Role;
use slipway_api::{Error, Root, TrustedRoot};

use crate::fixtures::*;

fn rotated(version: u64, threshold: u32, new_keys: &[u8], signers: &[u8]) -> Vec<u8> {
    let news: Vec<_> = new_keys.iter().map(|&n| key(n)).collect();
    let publics: Vec<_> = news.iter().map(|k| k.public()).collect();
    let signing: Vec<_> = signers.iter().map(|&n| key(n)).collect();
    let refs: Vec<_> = signing.iter().collect();
    Root::new(version, threshold, &publics)
        .sign(&refs)
        .to_json_pretty()
        .into_bytes()
}

#[test]
fn rotation_signed_by_old_and_new_thresholds_is_accepted() {
    let r1 = root(&[1, 2, 3], 2);
    let r2 = r1
        .rotate(&rotated(2, 2, &[4, 5, 6], &[1, 2, 4, 5]))
        .unwrap();
    assert_eq!(r2.version(), 2);
    // New keys now sign releases; old ones no longer do.
    r2.verify_release(&signed("2.0.0", &[4, 6])).unwrap();
    assert!(r2.verify_release(&signed("2.0.0", &[1, 2])).is_err());
    // And rotation chains: 2 -> 3.
    let r3 = r2.rotate(&rotated(3, 1, &[7], &[4, 5, 7])).unwrap();
    r3.verify_release(&signed("2.0.0", &[7])).unwrap();
}

#[test]
fn rotation_signed_only_by_the_new_keys_is_refused() {
    let r1 = root(&[1, 2, 3], 2);
    let err = r1
        .rotate(&rotated(2, 2, &[4, 5, 6], &[4, 5, 6]))
        .unwrap_err();
    match err {
        Error::ThresholdNotMet { role, valid, .. } => {
            assert_eq!((role, valid), (Role::PreviousRoot, 0))
        }
        other => panic!("expected ThresholdNotMet, got {other}"),
    }
}

#[test]
fn rotation_signed_only_by_the_old_keys_is_refused() {
    let r1 = root(&[1, 2, 3], 2);
    let err = r1
        .rotate(&rotated(2, 2, &[4, 5, 6], &[1, 2, 3, 4]))
        .unwrap_err();
    match err {
        Error::ThresholdNotMet { role, valid, .. } => assert_eq!((role, valid), (Role::Root, 1)),
        other => panic!("expected ThresholdNotMet, got {other}"),
    }
}

#[test]
fn rotation_that_skips_a_version_is_refused() {
    let r1 = root(&[1], 1);
    let err = r1.rotate(&rotated(3, 1, &[2], &[1, 2])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "root rotation from version 1 must produce version 2, got 3"
    );
    // Replaying the current version is refused the same way.
    assert!(matches!(
        r1.rotate(&rotated(1, 1, &[2], &[1, 2])),
        Err(Error::RootVersion { .. })
    ));
}

#[test]
fn root_with_threshold_above_its_keys_is_refused() {
    let env = Root::new(1, 3, &[key(1).public(), key(2).public()]).sign(&[&key(1), &key(2)]);
    let err = TrustedRoot::bootstrap(env.to_json_pretty().as_bytes()).unwrap_err();
    assert!(matches!(err, Error::InvalidRoot { .. }), "{err}");
}

#[test]
fn bootstrap_root_must_meet_its_own_threshold() {
    let env = Root::new(1, 2, &[key(1).public(), key(2).public()]).sign(&[&key(1)]);
    let err = TrustedRoot::bootstrap(env.to_json_pretty().as_bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ThresholdNotMet {
                role: Role::Root,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn root_with_a_mislabelled_key_id_is_refused() {
    let mut root = Root::new(1, 1, &[key(1).public()]);
    let entry = root.keys.pop_first().unwrap().1;
    root.keys.insert(key(2).id().to_owned(), entry);
    let env = root.sign(&[&key(1)]);
    let err = TrustedRoot::bootstrap(env.to_json_pretty().as_bytes()).unwrap_err();
    assert!(matches!(err, Error::KeyIdMismatch { .. }), "{err}");
}
