//! End-to-end routing of public channel messages and files across a mesh.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::time::Duration;

use common::*;
use socp::server::RunningServer;
use socp_protocol::crypto::sha256_hex;
use socp_protocol::message::{FileChunk, FileEnd, FileId, FileMode, FileStart};
use socp_protocol::{content, now_ms, Base64Url, Envelope, Message, Signature, To};

const WAIT: Duration = Duration::from_secs(15);

/// Wait until every server of `servers` links to all the others.
async fn mesh(servers: &[&RunningServer]) {
    for s in servers {
        eventually(WAIT, "a full mesh", || async {
            links_up(&s.status().await) == servers.len() - 1
        })
        .await;
    }
}

/// Wait until every user has seen every user's USER_ADVERTISE.
async fn everyone_sees_everyone(users: &mut [User]) {
    let ids: Vec<_> = users.iter().map(|u| u.id.clone()).collect();
    for u in users.iter_mut() {
        for id in &ids {
            assert!(u.sees_user(id, WAIT).await, "{} sees {id}", u.id);
        }
    }
}

fn field<'a>(env: &'a Envelope, name: &str) -> &'a str {
    env.payload()[name]
        .as_str()
        .unwrap_or_else(|| panic!("{} has no string `{name}`", env.summary()))
}

#[actix_rt::test]
async fn a_public_message_reaches_every_member_on_every_server_exactly_once() {
    let a = server(0, &[]).await;
    let b = server(1, &[a.addr]).await;
    let c = server(2, &[a.addr]).await;
    mesh(&[&a, &b, &c]).await;

    let mut users = vec![
        User::join(a.addr, 10).await,
        User::join(a.addr, 11).await,
        User::join(b.addr, 12).await,
        User::join(b.addr, 13).await,
        User::join(c.addr, 14).await,
    ];
    everyone_sees_everyone(&mut users).await;
    let home = [&a, &a, &b, &b, &c].map(|s| s.server_id.clone());

    // The sender (on a) encrypts for each member, itself included.
    let members: Vec<_> = users
        .iter()
        .map(|u| (u.id.clone(), u.key.public_key().clone()))
        .collect();
    let frames: Vec<Envelope> = members
        .iter()
        .map(|(id, key)| {
            users[0].public(id, key, &format!("hello everyone; this copy is for {id}"))
        })
        .collect();
    for f in &frames {
        users[0].peer.send(f).await;
    }

    let sender = users[0].id.clone();
    let sender_pub = users[0].key.public_key().clone();
    for (i, u) in users.iter_mut().enumerate() {
        let got = u
            .peer
            .expect(WAIT, "public USER_DELIVER", is("USER_DELIVER"))
            .await;
        assert_eq!(got.payload()["kind"], "public", "{}", got.summary());
        assert_eq!(field(&got, "sender"), sender.as_str());
        assert_eq!(field(&got, "group_id"), "public");
        assert_eq!(got.to().as_str(), u.id.as_str());
        assert_eq!(
            got.from(),
            home[i].as_str(),
            "delivered by the member's server"
        );
        let server_key = socp_protocol::fixtures::key(i / 2).public_key().clone();
        got.verify(&server_key)
            .expect("signed by the member's server");
        assert_eq!(
            u.open(&got),
            format!("hello everyone; this copy is for {}", u.id),
            "each member reads its own copy"
        );
        let pubkey = socp_protocol::PublicKey::parse(field(&got, "sender_pub")).expect("key");
        assert_eq!(pubkey, sender_pub, "sender_pub is the advertised key");
        let ct = Base64Url::parse(field(&got, "ciphertext")).expect("b64");
        let sig = Signature::parse(field(&got, "content_sig")).expect("sig");
        let ts = got.payload()["orig_ts"].as_i64().expect("orig_ts");
        content::verify_public(&pubkey, &sig, &ct, sender.as_str(), ts)
            .expect("content signature verifies end to end");
    }
    // Nobody gets a second copy.
    for u in users.iter_mut() {
        let extra = u
            .peer
            .count(Duration::from_millis(500), is("USER_DELIVER"))
            .await;
        assert_eq!(extra, 0, "{} got {extra} extra deliveries", u.id);
    }
}

#[actix_rt::test]
async fn a_files_chunks_arrive_in_order_across_servers() {
    let a = server(3, &[]).await;
    let b = server(4, &[a.addr]).await;
    mesh(&[&a, &b]).await;
    let mut users = vec![User::join(a.addr, 15).await, User::join(b.addr, 16).await];
    everyone_sees_everyone(&mut users).await;
    let (sender, receiver) = (&users[0], &users[1]);
    let to = To::from(&receiver.id);

    // 20 chunks of at most 446 bytes; the last one short.
    const CHUNK: usize = 446;
    let original: Vec<u8> = (0..19 * CHUNK + 123)
        .map(|i| (i * 7919 % 251) as u8)
        .collect();
    let chunks: Vec<&[u8]> = original.chunks(CHUNK).collect();
    assert_eq!(chunks.len(), 20);
    let file_id = FileId::random();
    let digest = sha256_hex(&original);

    let mut frames = vec![Envelope::from_message(
        &sender.id,
        to.clone(),
        now_ms(),
        &Message::FileStart(FileStart {
            file_id: file_id.clone(),
            name: "report.bin".into(),
            size: original.len() as u64,
            sha256: Some(digest.clone()),
            mode: FileMode::Dm,
            fast: None,
        }),
    )];
    for (index, chunk) in chunks.iter().enumerate() {
        let ts = now_ms();
        let ct = Base64Url::from_bytes(&receiver.key.public_key().encrypt(chunk).expect("fits"));
        let sig = content::sign_dm(
            &sender.key,
            &ct,
            sender.id.as_str(),
            receiver.id.as_str(),
            ts,
        )
        .expect("signs");
        frames.push(Envelope::from_message(
            &sender.id,
            to.clone(),
            ts,
            &Message::FileChunk(FileChunk {
                file_id: file_id.clone(),
                index: index as u64,
                ciphertext: ct,
                sender_pub: Some(sender.key.public_key().clone()),
                content_sig: Some(sig),
                total: None,
            }),
        ));
    }
    frames.push(Envelope::from_message(
        &sender.id,
        to,
        now_ms(),
        &Message::FileEnd(FileEnd {
            file_id: file_id.clone(),
            status: None,
        }),
    ));
    let sender_id = sender.id.clone();
    let sender_pub = sender.key.public_key().clone();
    let receiver_id = receiver.id.clone();
    for f in &frames {
        users[0].peer.send(f).await;
    }

    let receiver = &mut users[1];
    let mut kinds = Vec::new();
    let mut received = Vec::new();
    let mut announced = None;
    while kinds.last().map(String::as_str) != Some("file_end") {
        let got = receiver
            .peer
            .expect(WAIT, "file USER_DELIVER", is("USER_DELIVER"))
            .await;
        assert_eq!(field(&got, "sender"), sender_id.as_str());
        assert_eq!(field(&got, "file_id"), file_id.as_str());
        let kind = field(&got, "kind").to_owned();
        match kind.as_str() {
            "file_start" => {
                announced = Some((
                    got.payload()["size"].as_u64().expect("size"),
                    field(&got, "sha256").to_owned(),
                    field(&got, "name").to_owned(),
                ));
            }
            "file_chunk" => {
                assert_eq!(
                    got.payload()["index"].as_u64(),
                    Some(received.len() as u64),
                    "chunks in index order"
                );
                let pubkey =
                    socp_protocol::PublicKey::parse(field(&got, "sender_pub")).expect("key");
                assert_eq!(pubkey, sender_pub);
                let ct = Base64Url::parse(field(&got, "ciphertext")).expect("b64");
                let sig = Signature::parse(field(&got, "content_sig")).expect("sig");
                let ts = got.payload()["orig_ts"].as_i64().expect("orig_ts");
                content::verify_dm(
                    &pubkey,
                    &sig,
                    &ct,
                    sender_id.as_str(),
                    receiver_id.as_str(),
                    ts,
                )
                .expect("chunk signature verifies end to end");
                received.push(receiver.key.decrypt(ct.bytes()).expect("decrypts"));
            }
            "file_end" => {}
            other => panic!("unexpected kind {other}"),
        }
        kinds.push(kind);
    }
    let mut expected = vec!["file_start".to_owned()];
    expected.extend(std::iter::repeat_n("file_chunk".to_owned(), 20));
    expected.push("file_end".to_owned());
    assert_eq!(kinds, expected, "start, 20 chunks, end, in that order");
    let bytes = received.concat();
    let (size, sha, name) = announced.expect("file_start came");
    assert_eq!(name, "report.bin");
    assert_eq!(size, original.len() as u64);
    assert_eq!(bytes, original, "reassembled bytes equal the original");
    assert_eq!(sha256_hex(&bytes), sha, "sha256 matches FILE_START");
    assert_eq!(sha, digest);
}
