//! The seed's request and response bodies (`testdata/seed/`), read by the unit tests: the
//! ground truth of what the API sends and answers.

/// Every seed body: each example's request, then the server's answer to it.
pub const FILES: [&str; 6] = [
    "01-windows-install.request.json",
    "01-windows-install.response.json",
    "02-linux-rollback.request.json",
    "02-linux-rollback.response.json",
    "03-chained-job.request.json",
    "03-chained-job.response.json",
];

/// One seed body's bytes.
pub fn bytes(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/seed/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
