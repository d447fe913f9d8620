//! A local HTTP server answering `/search/repositories` the way GitHub's REST API does
//! (response shape, `total_count`, the 1,000-result cap, `Link` pagination, rate-limit
//! headers), with injectable faults. Plain std threads: one request per connection.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

#[derive(Debug, Clone)]
pub struct FakeRepo {
    pub full_name: String,
    pub language: String,
    pub pushed_at: i64,
    pub stars: i64,
    /// Served as `clone_url`; None: `https://github.com/<full_name>.git`.
    pub clone_url: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// 403, primary limit exhausted: remaining 0, reset in `secs`.
    RateLimit403 {
        secs: i64,
    },
    /// 429 with Retry-After.
    Retry429 {
        secs: u64,
    },
    BadGateway,
    MalformedBody,
    /// Serves the request, then the repository is pushed (its `pushed_at` becomes
    /// now), as happens to a repository while a crawler pages through its window.
    PushAfter {
        full_name: &'static str,
    },
    /// Serves the request as it is: holds a place in the queue.
    Nothing,
}

#[derive(Default)]
pub struct Shared {
    pub faults: VecDeque<Fault>,
    /// Every `q` asked for, in order.
    pub queries: Vec<String>,
    pub authorizations: Vec<Option<String>>,
    /// Repositories pushed since the start: name → new `pushed_at`.
    pub pushed: std::collections::HashMap<String, i64>,
}

pub struct FakeGithub {
    pub url: String,
    pub shared: Arc<Mutex<Shared>>,
}

impl FakeGithub {
    pub fn start(repos: Vec<FakeRepo>, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let repos = Arc::new(repos);
        let (state, base) = (shared.clone(), url.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (state, repos, base) = (state.clone(), repos.clone(), base.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    let _ = serve(stream, &state, &repos, &base);
                });
            }
        });
        Self { url, shared }
    }

    pub fn inject(&self, faults: &[Fault]) {
        self.shared
            .lock()
            .unwrap()
            .faults
            .extend(faults.iter().copied());
    }

    pub fn queries(&self) -> Vec<String> {
        self.shared.lock().unwrap().queries.clone()
    }
}

fn serve(
    stream: TcpStream,
    state: &Mutex<Shared>,
    repos: &[FakeRepo],
    base: &str,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            // Closed before the headers ended (a client killed mid-request): no
            // request was made, so none is recorded.
            return Ok(());
        }
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let fault = {
        let mut state = state.lock().unwrap();
        state.authorizations.push(authorization);
        state.queries.push(param("q").unwrap_or_default());
        state.faults.pop_front()
    };
    let now = Utc::now().timestamp();
    let rate = |remaining: u64| {
        format!("x-ratelimit-limit: 30\r\nx-ratelimit-remaining: {remaining}\r\nx-ratelimit-reset: {}\r\nx-ratelimit-resource: search\r\n", now + 60)
    };
    let mut out = stream;
    match fault {
        Some(Fault::RateLimit403 { secs }) => {
            return respond(&mut out, "403 Forbidden", &format!("x-ratelimit-limit: 30\r\nx-ratelimit-remaining: 0\r\nx-ratelimit-reset: {}\r\n", now + secs),
                r#"{"message":"API rate limit exceeded","documentation_url":"https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"}"#);
        }
        Some(Fault::Retry429 { secs }) => {
            return respond(
                &mut out,
                "429 Too Many Requests",
                &format!("retry-after: {secs}\r\n{}", rate(20)),
                r#"{"message":"You have exceeded a secondary rate limit."}"#,
            );
        }
        Some(Fault::BadGateway) => {
            return respond(&mut out, "502 Bad Gateway", "", "<html>bad gateway</html>")
        }
        Some(Fault::PushAfter { .. } | Fault::Nothing) | None => {}
        Some(Fault::MalformedBody) => {
            return respond(
                &mut out,
                "200 OK",
                &rate(20),
                r#"{"total_count": 5, "items": [{"full_name": "#,
            )
        }
    }
    if path != "/search/repositories" {
        return respond(&mut out, "404 Not Found", "", r#"{"message":"Not Found"}"#);
    }
    let q = param("q").unwrap_or_default();
    let per_page: usize = param("per_page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .min(100);
    let page: usize = param("page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let (language, from, to) = parse_query(&q);
    let pushed = state.lock().unwrap().pushed.clone();
    let pushed_at = |r: &FakeRepo| pushed.get(&r.full_name).copied().unwrap_or(r.pushed_at);
    let mut matching: Vec<&FakeRepo> = repos
        .iter()
        .filter(|r| language.as_ref().is_none_or(|l| &r.language == l))
        .filter(|r| pushed_at(r) >= from && pushed_at(r) <= to)
        .collect();
    // Best match is approximated by stars; `sort=updated` is honoured.
    if param("sort").as_deref() == Some("updated") {
        matching.sort_by_key(|r| (pushed_at(r), r.full_name.clone()));
        if param("order").as_deref() != Some("asc") {
            matching.reverse();
        }
    } else {
        matching.sort_by_key(|r| (std::cmp::Reverse(r.stars), r.full_name.clone()));
    }
    let total = matching.len();
    let reachable = total.min(1000);
    if (page - 1) * per_page >= 1000 {
        return respond(
            &mut out,
            "422 Unprocessable Entity",
            &rate(20),
            r#"{"message":"Only the first 1000 search results are available"}"#,
        );
    }
    let items: Vec<String> = matching
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .take(reachable.saturating_sub((page - 1) * per_page))
        .map(|r| item_json(r))
        .collect();
    let last_page = reachable.div_ceil(per_page).max(1);
    // Like GitHub's, the links keep every parameter of the request but the page.
    let link_to = |p: usize| {
        let mut link = format!(
            "{base}/search/repositories?q={}&per_page={per_page}&page={p}",
            encode(&q)
        );
        for name in ["sort", "order"] {
            if let Some(value) = param(name) {
                link.push_str(&format!("&{name}={}", encode(&value)));
            }
        }
        link
    };
    let mut links = Vec::new();
    if page < last_page {
        links.push(format!("<{}>; rel=\"next\"", link_to(page + 1)));
        links.push(format!("<{}>; rel=\"last\"", link_to(last_page)));
    }
    if page > 1 {
        links.push(format!("<{}>; rel=\"prev\"", link_to(page - 1)));
        links.push(format!("<{}>; rel=\"first\"", link_to(1)));
    }
    let mut headers = rate(25);
    if !links.is_empty() {
        headers.push_str(&format!("link: {}\r\n", links.join(", ")));
    }
    let body = format!(
        r#"{{"total_count":{total},"incomplete_results":false,"items":[{}]}}"#,
        items.join(",")
    );
    let served = respond(&mut out, "200 OK", &headers, &body);
    if let Some(Fault::PushAfter { full_name }) = fault {
        state
            .lock()
            .unwrap()
            .pushed
            .insert(full_name.to_string(), Utc::now().timestamp());
    }
    served
}

fn respond(out: &mut TcpStream, status: &str, headers: &str, body: &str) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {status}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
        body.len()
    )?;
    out.flush()
}

fn iso(t: i64) -> String {
    Utc.timestamp_opt(t, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn item_json(r: &FakeRepo) -> String {
    let (owner, name) = r.full_name.split_once('/').unwrap();
    serde_json::json!({
        "id": r.pushed_at, "node_id": "R_x", "name": name, "full_name": r.full_name, "private": false,
        "owner": {"login": owner, "id": 1, "type": "User"},
        "html_url": format!("https://github.com/{}", r.full_name),
        "description": format!("{} test repository", r.full_name), "fork": false,
        "url": format!("https://api.github.com/repos/{}", r.full_name),
        "created_at": iso(r.pushed_at - 86_400), "updated_at": iso(r.pushed_at), "pushed_at": iso(r.pushed_at),
        "git_url": format!("git://github.com/{}.git", r.full_name),
        "ssh_url": format!("git@github.com:{}.git", r.full_name),
        "clone_url": r.clone_url.clone().unwrap_or_else(|| format!("https://github.com/{}.git", r.full_name)),
        "size": 120, "stargazers_count": r.stars, "watchers_count": r.stars, "language": r.language,
        "forks_count": 3, "open_issues_count": 0, "archived": false, "disabled": false,
        "license": {"key": "mit", "name": "MIT License", "spdx_id": "MIT", "url": "https://api.github.com/licenses/mit"},
        "topics": ["testing"], "visibility": "public", "default_branch": "main", "score": 1.0
    })
    .to_string()
}

/// `language:"X"` and `pushed:A..B` out of a search query; other qualifiers are accepted.
fn parse_query(q: &str) -> (Option<String>, i64, i64) {
    let mut language = None;
    let (mut from, mut to) = (i64::MIN, i64::MAX);
    for token in q.split(' ') {
        if let Some(l) = token.strip_prefix("language:") {
            language = Some(l.trim_matches('"').to_string());
        } else if let Some(range) = token.strip_prefix("pushed:") {
            let (a, b) = range.split_once("..").expect("range");
            from = DateTime::parse_from_rfc3339(a).unwrap().timestamp();
            to = DateTime::parse_from_rfc3339(b).unwrap().timestamp();
        }
    }
    (language, from, to)
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
