//! HTTP request heads (request line and headers, then whatever follows) sent raw to a running
//! `prefine serve` on loopback (a tiny random backbone, no adapters): the server answers with
//! an HTTP status or closes the connection, within the header timeout, and never crashes; the
//! tiny head limit (8 KiB) makes 431 reachable. Seeded by `seed.sh` from valid heads.
#![no_main]
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prefine_serve::synthetic::write_tiny_model;
use prefine_serve::{serve, Engine, ServeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Server {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join("prefine-fuzz-http-head-model");
        let real = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2");
        write_tiny_model(&dir, &real, 1).unwrap();
        let engine = Arc::new(Engine::load(&dir).unwrap());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = ServeConfig {
            header_timeout: Duration::from_secs(1),
            max_header_bytes: 8192,
            ..ServeConfig::default()
        };
        rt.spawn(serve(engine, cfg, listener, std::future::pending()));
        Server { rt, addr }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = server();
    let resp = s.rt.block_on(async {
        let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let _ = conn.write_all(data).await;
        let _ = conn.shutdown().await;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out))
            .await
            .expect("the server closes every connection within its header timeout")
            .ok();
        out
    });
    if !resp.is_empty() {
        let text = String::from_utf8_lossy(&resp);
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
        assert!((200..600).contains(&status), "{text:?}");
    }
});
