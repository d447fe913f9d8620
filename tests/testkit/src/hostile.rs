//! Servers that misbehave the way hostile or broken git hosts do, recording what they
//! were sent: one that accepts and then never answers, and an HTTP host that answers
//! every request with a fixed status and headers (a redirect elsewhere, a demand for
//! credentials).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// Accepts connections on 127.0.0.1 and never sends a byte; holds them open.
pub struct StalledServer {
    pub port: u16,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
}

impl StalledServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let held = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                held.lock().unwrap().push(stream);
            }
        });
        Self { port, accepted }
    }

    pub fn connections(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }
}

/// One request as the host saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub request_line: String,
    /// Every header, lowercased name, as sent.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 host answering every request with `status` and `headers` and an empty
/// body, keeping each request it was sent.
pub struct RecordingHost {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl RecordingHost {
    pub fn start(status: &'static str, headers: Vec<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (log, headers) = (log.clone(), headers.clone());
                std::thread::spawn(move || {
                    let _ = answer(stream, status, &headers, &log);
                });
            }
        });
        Self { port, seen }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn answer(
    stream: TcpStream,
    status: &str,
    headers: &[String],
    log: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut seen = Seen {
            request_line: request_line.trim_end().to_string(),
            headers: Vec::new(),
        };
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                seen.headers
                    .push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        log.lock().unwrap().push(seen);
        let mut response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n");
        for header in headers {
            response.push_str(header);
            response.push_str("\r\n");
        }
        response.push_str("\r\n");
        writer.write_all(response.as_bytes())?;
    }
}
