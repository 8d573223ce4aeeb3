//! What the fuzz targets share: fixed keys, the roots and the release they sign, the small disk
//! image the GPT target starts from, and the seed inputs (`seeds` writes them to `corpus/`).
//!
//! Keys come from fixed seeds and ed25519 signing is deterministic, so every run of every target
//! knows exactly which payloads were ever signed: a verifier that accepts anything else was
//! forged past, which no fuzzer can do by chance unless verification is broken.

use std::io::Cursor;

use sha2::{Digest, Sha256};
use slipway_api::blockindex::BlockIndex;
use slipway_api::dsse::{Envelope, RELEASE_PAYLOAD_TYPE};
use slipway_api::manifest::{
    Advisory, Blob, DeltaSource, Manifest, OsImage, PayloadFormat, RELEASE_TYPE, RuntimeImage,
    Severity,
};
use slipway_api::{PrivateKey, Root, Sha256Digest, TrustedRoot};

/// Admin token of the in-process server of `server_api`.
pub const TOKEN: &str = "fuzz-admin-token-0123456789";

/// The fixed key number `n`.
pub fn key(n: u8) -> PrivateKey {
    PrivateKey::from_seed([n; 32])
}

/// Root v1: keys 1, 2, 3, threshold 2, signed by 1 and 2.
pub fn root_v1() -> Envelope {
    let keys = [key(1), key(2), key(3)];
    Root::new(
        1,
        2,
        &[keys[0].public(), keys[1].public(), keys[2].public()],
    )
    .sign(&[&keys[0], &keys[1]])
}

/// Root v2: keys 2, 3, 4, threshold 2, signed by all four (a threshold of v1's keys and of its
/// own).
pub fn root_v2() -> Envelope {
    let keys = [key(1), key(2), key(3), key(4)];
    Root::new(
        2,
        2,
        &[keys[1].public(), keys[2].public(), keys[3].public()],
    )
    .sign(&[&keys[0], &keys[1], &keys[2], &keys[3]])
}

/// The root the targets trust: v1.
pub fn trusted() -> TrustedRoot {
    TrustedRoot::bootstrap(root_v1().to_json_pretty().as_bytes()).expect("root v1 bootstraps")
}

fn digest(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bytes).into())
}

/// A release manifest using every field: a zstd OS image with a delta source, a runtime image,
/// a floor, an advisory.
pub fn manifest() -> Manifest {
    let image_size = 1 << 20;
    Manifest {
        kind: RELEASE_TYPE.into(),
        channel: "stable".into(),
        version: semver::Version::new(2, 0, 0),
        expires: "2030-01-01T00:00:00Z".parse().expect("timestamp"),
        os: Some(OsImage {
            url: "payloads/os.img.zst".into(),
            size: 4096,
            sha256: digest(b"os"),
            format: PayloadFormat::Zstd,
            delta: Some(DeltaSource {
                block_size: 4096,
                index: Blob {
                    url: "payloads/os.img.blockidx".into(),
                    size: slipway_api::blockindex::index_len(image_size, 4096),
                    sha256: digest(b"index"),
                },
                image: Blob {
                    url: "payloads/os.img".into(),
                    size: image_size,
                    sha256: digest(b"image"),
                },
            }),
        }),
        runtime: vec![RuntimeImage {
            name: "containerd".into(),
            url: "payloads/containerd.raw".into(),
            size: 512,
            sha256: digest(b"containerd"),
        }],
        min_from_version: Some(semver::Version::new(1, 0, 0)),
        advisories: vec![Advisory {
            id: "CVE-2026-1234".into(),
            severity: Some(Severity::Important),
            summary: Some("fixed".into()),
        }],
    }
}

/// The manifest signed by keys 1 and 2 (valid under root v1 and v2).
pub fn release() -> Envelope {
    manifest().sign(&[&key(1), &key(2)])
}

/// Every payload these fixtures sign: the only payloads a verifier may ever accept.
pub fn signed_payloads() -> Vec<Vec<u8>> {
    [root_v1(), root_v2(), release()]
        .iter()
        .map(|e| e.payload_bytes().expect("fixtures encode their payloads"))
        .collect()
}

/// Whether `env` carries one of [`signed_payloads`] as the payload type it was signed with.
pub fn is_signed_fixture(env: &Envelope) -> bool {
    let Ok(payload) = env.payload_bytes() else {
        return false;
    };
    [root_v1(), root_v2(), release()].iter().any(|e| {
        e.payload_type == env.payload_type && e.payload_bytes().ok() == Some(payload.clone())
    })
}

/// The release payload type (for targets that check what they accepted).
pub const RELEASE: &str = RELEASE_PAYLOAD_TYPE;

/// Sectors of the GPT target's disk image.
pub const GPT_SECTORS: u64 = 96;

/// A GPT disk image as an image builder leaves it: 1 "ESP", 2 SLIPWAY_A (good, priority 1),
/// 3 SLIPWAY_B, 4 "data", each partition's sectors filled with its number.
pub fn gpt_image() -> Vec<u8> {
    let mut disk = Cursor::new(vec![0u8; (GPT_SECTORS * 512) as usize]);
    let mut gpt = gptman::GPT::new_from(&mut disk, 512, [7; 16]).expect("new GPT");
    let first = gpt.header.first_usable_lba;
    let size = (gpt.header.last_usable_lba - first + 1) / 4;
    let linux_fs = [
        0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d,
        0xe4,
    ];
    for (i, name) in ["ESP", "SLIPWAY_A", "SLIPWAY_B", "data"].iter().enumerate() {
        let i = i as u64;
        gpt[i as u32 + 1] = gptman::GPTPartitionEntry {
            partition_type_guid: linux_fs,
            unique_partition_guid: [i as u8 + 1; 16],
            starting_lba: first + i * size,
            ending_lba: first + (i + 1) * size - 1,
            // Bits outside the scheme's fields, which every write must keep.
            attribute_bits: 1 | (1 << 60),
            partition_name: (*name).into(),
        };
    }
    // Slot A: priority 1, successful.
    gpt[2].attribute_bits |= (1 << 48) | (1 << 56);
    gptman::GPT::write_protective_mbr_into(&mut disk, 512).expect("MBR");
    gpt.write_into(&mut disk).expect("write GPT");
    let mut bytes = disk.into_inner();
    for i in 0..4u64 {
        let start = ((first + i * size) * 512) as usize;
        let end = ((first + (i + 1) * size) * 512) as usize;
        bytes[start..end].fill(i as u8 + 1);
    }
    bytes
}

/// A block index of a small image (3 blocks of 4 KiB, the last short; two equal).
pub fn block_index() -> Vec<u8> {
    let mut image = vec![0u8; 4096 * 2 + 100];
    image[4096 * 2..].fill(7);
    BlockIndex::build(&image[..], 4096)
        .expect("index builds")
        .0
        .to_bytes()
}

/// The seed inputs of every target: (target, file name, bytes).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push((target, name.to_owned(), bytes));
    };
    add(
        "envelope",
        "release",
        release().to_json_pretty().into_bytes(),
    );
    add(
        "envelope",
        "root-v2",
        root_v2().to_json_pretty().into_bytes(),
    );
    add("manifest", "full", manifest().to_json());
    add(
        "manifest",
        "runtime-only",
        br#"{"type":"slipway.dev/release/v1","channel":"beta","version":"1.2.3-rc.1+b7","expires":"2030-01-01T00:00:00Z","runtime":[{"name":"kubelet","url":"https://x/k","size":1,"sha256":"0000000000000000000000000000000000000000000000000000000000000000"}]}"#.to_vec(),
    );
    add("root", "v1", root_v1().to_json_pretty().into_bytes());
    add("root", "v2", root_v2().to_json_pretty().into_bytes());
    add("blockindex", "three-blocks", block_index());
    let mut env = b"# GRUB Environment Block\n# WARNING: Do not edit this file by tools other than grub-editenv!!!\nslipway_slot=A\nslipway_a_tries=0\nslipway_b_good=1\nweird=a\\\\b\\\nc\n"
        .to_vec();
    env.resize(1024, b'#');
    env.extend_from_slice(b"slipway_b_tries\x003\x00new\x00x\\y\x00");
    add("grubenv", "block-and-sets", env);
    // Operation bytes: bit 0 the slot (B), bits 1-3 the operation (0-2 trial, 3-4 good, 5-7
    // bad), bits 4-7 the tries.
    for (name, op) in [("trial-b", 0x31u8), ("good-b", 0x07), ("bad-a", 0x0a)] {
        let mut v = vec![op];
        v.extend_from_slice(&gpt_image());
        add("gpt", name, v);
    }
    add(
        "sdboot",
        "trial-b",
        b"\x31slipway-a.conf\x00title A\nsort-key slipway-0-preferred\nlinux /slipway/a/vmlinuz\n\x00slipway-b+2-1.conf\x00title B\nsort-key slipway-1-fallback\nversion 6.1\nlinux /slipway/b/vmlinuz\n\x00other-1.10.conf\x00linux /other\n\x00\x00default slipway-*\ntimeout 3\n"
            .to_vec(),
    );
    add(
        "settings",
        "full",
        br#"server = "http://127.0.0.1:8080/"
channel = "stable"
group = "workers"
check-interval = "1h30m"
http-timeout = "500ms"
boot-tries = 2
max-attempts = 3
delta = true
delta-max-fetch = 0.5
checkpoint-bytes = 1048576
[slots]
a = "/dev/disk/by-partlabel/SLIPWAY_A"
b = "/dev/disk/by-partlabel/SLIPWAY_B"
[boot]
backend = "gpt"
disk = "/dev/vda"
"#
        .to_vec(),
    );
    for (name, value) in [
        ("closed", "bytes=0-1023"),
        ("open", "bytes=4096-"),
        ("suffix", "bytes=-512"),
        ("multi", "bytes=0-1,5-9"),
    ] {
        let mut v = 1_000_000u64.to_le_bytes().to_vec();
        v.extend_from_slice(value.as_bytes());
        add("range", name, v);
    }
    add(
        "fleetlock",
        "lock",
        b"\x01{\"client_params\":{\"id\":\"c1a7e5\",\"group\":\"workers.zone-a\"}}".to_vec(),
    );
    for (name, op, body) in [
        ("check", 0u8, r#"{"machineId":"m-1","channel":"stable","group":"g","version":"1.0.0","arch":"x86_64","bootId":"b"}"#.to_owned()),
        ("event", 1, r#"{"machineId":"m-1","version":"2.0.0","event":"staged","detail":"","transfer":{"imageBytes":100,"fetchedBytes":10,"localBytes":90,"delta":true}}"#.to_owned()),
        ("cluster", 2, r#"{"cluster":"prod","at":"2026-12-07T00:00:00Z","policies":[{"name":"workers","channel":"stable","targetVersion":"2.0.0","nodes":3,"updated":1,"maxUnavailable":1,"window":"open"}],"nodes":[{"name":"n1","policy":"workers","phase":"Healthy","currentVersion":"2.0.0","granted":true}]}"#.to_owned()),
        ("publish", 3, String::from_utf8(release().to_json_pretty().into_bytes()).expect("utf-8")),
        ("promote", 4, r#"{"version":"2.0.0","waves":[{"after":"0s","fraction":0.1},{"after":"1h","fraction":1}]}"#.to_owned()),
        ("advisory", 5, r#"{"id":"CVE-2026-1","summary":"x"}"#.to_owned()),
        ("payload-range", 6, "bytes=0-10".to_owned()),
    ] {
        let mut v = vec![op, 1];
        v.extend_from_slice(body.as_bytes());
        add("server_api", name, v);
    }
    out
}
