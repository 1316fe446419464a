//! `tidemark views | query | subscribe | status`: the public API for people, printing
//! tables, JSON lines or CSV.
//!
//! Values given on the command line (keys, range bounds, filters) are read according to
//! their column's type, which `ListViews` reports: integers, decimals, `true`/`false`,
//! timestamps as RFC 3339 or milliseconds, anything else as text.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tidemark_dataflows::time::{format_timestamp, parse_timestamp};
use tidemark_proto::auth::BearerToken;
use tidemark_proto::v1::filter::Op;
use tidemark_proto::v1::tidemark_client::TidemarkClient;
use tidemark_proto::v1::value::Kind;
use tidemark_proto::v1::*;
use tidemark_proto::value;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A client of the public API.
pub type Client = TidemarkClient<InterceptedService<Channel, BearerToken>>;

/// Where the coordinator is and how to reach it.
#[derive(Clone, Debug, Args)]
pub struct Connect {
    /// The coordinator's public address (`https://` for TLS).
    #[arg(long, env = "TIDEMARK_TARGET", default_value = "http://127.0.0.1:6875")]
    pub target: String,
    /// Bearer token, if the coordinator requires one.
    #[arg(long, env = "TIDEMARK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the certificate authority that signed the coordinator's certificate
    /// (needed for an `https://` target).
    #[arg(long, env = "TIDEMARK_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Host name to expect in the coordinator's certificate (default: the target's host).
    #[arg(long, env = "TIDEMARK_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// Give up on a call (or one page of it) after this many seconds.
    #[arg(long, env = "TIDEMARK_TIMEOUT", default_value_t = 30)]
    pub timeout: u64,
}

impl Connect {
    /// Connects to the coordinator.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let mut endpoint = Endpoint::from_shared(self.target.clone())
            .with_context(|| format!("{:?} is not a URL", self.target))?
            .connect_timeout(Duration::from_secs(10));
        if self.target.starts_with("https://") {
            let ca = self.ca_cert.as_ref().context("an https:// target needs --ca-cert")?;
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            if let Some(domain) = &self.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = tokio::time::timeout(self.deadline(), endpoint.connect())
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {}: no answer within {:?}", self.target, self.deadline()))?
            .with_context(|| format!("connecting to {}", self.target))?;
        let token = BearerToken::new(self.token.as_deref()).map_err(anyhow::Error::msg)?;
        Ok(TidemarkClient::with_interceptor(channel, token).max_decoding_message_size(tidemark_proto::limits::INTERNAL_MAX_MESSAGE_BYTES))
    }

    /// How long one call may take.
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.timeout.max(1))
    }

    /// A request with this connection's deadline.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.deadline());
        request
    }
}

/// How rows are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line.
    Json,
    /// CSV with a header line.
    Csv,
}

/// `tidemark query`.
#[derive(Clone, Debug, Args)]
pub struct QueryArgs {
    /// The view.
    pub view: String,
    /// Key values in key order (repeat the flag); at least the routing columns make it a
    /// lookup answered by the one worker that owns the key.
    #[arg(long = "key")]
    pub key: Vec<String>,
    /// Lower bound of a key range (inclusive; values in key order, a prefix is fine).
    #[arg(long = "from")]
    pub from: Vec<String>,
    /// Upper bound of a key range (exclusive).
    #[arg(long = "to")]
    pub to: Vec<String>,
    /// A column condition such as `country=FR`, `orders>=10`, `window!=day` (repeat to
    /// require several).
    #[arg(long = "where")]
    pub filters: Vec<String>,
    /// Read at this time (ms since the epoch); default the latest complete time.
    #[arg(long)]
    pub as_of: Option<u64>,
    /// At most this many rows (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Where the coordinator is.
    #[command(flatten)]
    pub connect: Connect,
}

/// `tidemark subscribe`.
#[derive(Clone, Debug, Args)]
pub struct SubscribeArgs {
    /// The view.
    pub view: String,
    /// A column condition, as for `query` (repeat to require several).
    #[arg(long = "where")]
    pub filters: Vec<String>,
    /// Start at this time (ms since the epoch); default the latest complete time.
    #[arg(long)]
    pub as_of: Option<u64>,
    /// Skip the contents at the start time: only later changes.
    #[arg(long)]
    pub no_snapshot: bool,
    /// Also print progress (the time through which the view is complete) after each batch.
    #[arg(long)]
    pub progress: bool,
    /// Stop after this many batches (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub batches: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Where the coordinator is.
    #[command(flatten)]
    pub connect: Connect,
}

/// `tidemark status` and `tidemark views`.
#[derive(Clone, Debug, Args)]
pub struct InfoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Where the coordinator is.
    #[command(flatten)]
    pub connect: Connect,
}

fn type_name(t: i32) -> &'static str {
    match ColumnType::try_from(t).unwrap_or(ColumnType::Unspecified) {
        ColumnType::Int64 => "int64",
        ColumnType::Double => "double",
        ColumnType::String => "string",
        ColumnType::Bool => "bool",
        ColumnType::TimestampMs => "timestamp",
        ColumnType::Bytes => "bytes",
        ColumnType::Unspecified => "?",
    }
}

/// Reads `text` as a value of `column`'s type.
pub fn parse_value(column: &Column, text: &str) -> anyhow::Result<Value> {
    let bad = || anyhow::anyhow!("{:?} is not a {} (column {})", text, type_name(column.r#type), column.name);
    if text == "null" && column.nullable {
        return Ok(value::null());
    }
    Ok(match ColumnType::try_from(column.r#type).unwrap_or(ColumnType::Unspecified) {
        ColumnType::Int64 => value::int64(text.parse().map_err(|_| bad())?),
        ColumnType::Double => value::double(text.parse().map_err(|_| bad())?),
        ColumnType::Bool => value::boolean(text.parse().map_err(|_| bad())?),
        ColumnType::TimestampMs => value::timestamp_ms(match text.parse::<i64>() {
            Ok(ms) => ms,
            Err(_) => parse_timestamp(text).ok_or_else(bad)?,
        }),
        ColumnType::Bytes => value::bytes(text.as_bytes()),
        ColumnType::String | ColumnType::Unspecified => value::string(text),
    })
}

/// Reads a condition such as `country=FR` against `view`'s columns.
pub fn parse_filter(view: &ViewInfo, text: &str) -> anyhow::Result<Filter> {
    const OPS: [(&str, Op); 6] = [("!=", Op::Ne), ("<=", Op::Le), (">=", Op::Ge), ("=", Op::Eq), ("<", Op::Lt), (">", Op::Gt)];
    let (at, symbol, op) = OPS
        .iter()
        .filter_map(|(symbol, op)| text.find(symbol).map(|at| (at, *symbol, *op)))
        .min_by_key(|(at, symbol, _)| (*at, std::cmp::Reverse(symbol.len())))
        .with_context(|| format!("{text:?} has no comparison (=, !=, <, <=, >, >=)"))?;
    let name = text[..at].trim();
    let column = view.columns.iter().find(|c| c.name == name).with_context(|| {
        let names: Vec<&str> = view.columns.iter().map(|c| c.name.as_str()).collect();
        format!("{} has no column {name:?}; its columns are {}", view.name, names.join(", "))
    })?;
    Ok(Filter { column: name.to_owned(), op: op as i32, value: Some(parse_value(column, text[at + symbol.len()..].trim())?) })
}

/// Reads key values in key order.
fn parse_key(view: &ViewInfo, texts: &[String]) -> anyhow::Result<Vec<Value>> {
    anyhow::ensure!(texts.len() <= view.key_columns.len(), "{} has {} key columns; {} values given", view.name, view.key_columns.len(), texts.len());
    texts
        .iter()
        .zip(&view.key_columns)
        .map(|(text, name)| {
            let column = view.columns.iter().find(|c| &c.name == name).context("a key column is a column")?;
            parse_value(column, text)
        })
        .collect()
}

/// A gRPC status as a short error: its code and message.
pub fn api_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

async fn view_info(client: &mut Client, connect: &Connect, name: &str) -> anyhow::Result<ViewInfo> {
    let views = client.list_views(connect.request(ListViewsRequest {})).await.map_err(api_error)?.into_inner().views;
    let names: Vec<String> = views.iter().map(|v| v.name.clone()).collect();
    views.into_iter().find(|v| v.name == name).with_context(|| format!("no view {name:?}; the views are {}", names.join(", ")))
}

/// A value as text: timestamps in RFC 3339.
pub fn text(v: &Value) -> String {
    match &v.kind {
        Some(Kind::TimestampMs(ms)) => format_timestamp(*ms),
        _ => value::display(v),
    }
}

fn json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None => serde_json::Value::Null,
        Some(Kind::Int64(x)) => (*x).into(),
        Some(Kind::Double(x)) => serde_json::Number::from_f64(*x).map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::Bool(x)) => (*x).into(),
        Some(Kind::String(x)) => x.clone().into(),
        Some(Kind::TimestampMs(x)) => format_timestamp(*x).into(),
        Some(Kind::Bytes(x)) => String::from_utf8_lossy(x).into_owned().into(),
    }
}

fn json_row(columns: &[Column], row: &Row) -> serde_json::Map<String, serde_json::Value> {
    columns.iter().zip(&row.values).map(|(c, v)| (c.name.clone(), json(v))).collect()
}

/// Prints aligned columns.
fn print_table(out: &mut impl Write, header: &[String], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned();
    writeln!(out, "{}", line(header))?;
    writeln!(out, "{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "))?;
    for row in rows {
        writeln!(out, "{}", line(row))?;
    }
    Ok(())
}

/// Prints a query's rows in `format` (with the CSV header if `header_line`).
pub fn print_rows(out: &mut impl Write, format: OutputFormat, columns: &[Column], rows: &[CountedRow], header_line: bool) -> anyhow::Result<()> {
    // A count column only where rows repeat (the `rejects` view).
    let counted = rows.iter().any(|r| r.count != 1);
    let mut header: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    if counted {
        header.push("count".into());
    }
    let cells = |r: &CountedRow| {
        let mut cells: Vec<String> = r.row.iter().flat_map(|row| row.values.iter().map(text)).collect();
        if counted {
            cells.push(r.count.to_string());
        }
        cells
    };
    match format {
        OutputFormat::Table => print_table(out, &header, &rows.iter().map(cells).collect::<Vec<_>>())?,
        OutputFormat::Csv => {
            let mut writer = csv::Writer::from_writer(out);
            if header_line {
                writer.write_record(&header)?;
            }
            for r in rows {
                writer.write_record(cells(r))?;
            }
            writer.flush()?;
        }
        OutputFormat::Json => {
            for r in rows {
                let mut object = r.row.as_ref().map(|row| json_row(columns, row)).unwrap_or_default();
                if counted {
                    object.insert("count".into(), r.count.into());
                }
                writeln!(out, "{}", serde_json::Value::Object(object))?;
            }
        }
    }
    Ok(())
}

/// `tidemark query`.
pub async fn query(args: QueryArgs) -> anyhow::Result<()> {
    let mut client = args.connect.client().await?;
    let view = view_info(&mut client, &args.connect, &args.view).await?;
    let range = (!args.from.is_empty() || !args.to.is_empty())
        .then(|| anyhow::Ok(KeyRange { lower: parse_key(&view, &args.from)?, upper: parse_key(&view, &args.to)? }))
        .transpose()?;
    anyhow::ensure!(range.is_none() || args.key.is_empty(), "give --key or --from/--to, not both");
    let request = QueryRequest {
        view: args.view.clone(),
        key: parse_key(&view, &args.key)?,
        range,
        filters: args.filters.iter().map(|f| parse_filter(&view, f)).collect::<anyhow::Result<_>>()?,
        as_of: args.as_of,
        limit: args.limit,
        timeout_ms: 0,
        page_token: Vec::new(),
    };
    let mut out = std::io::stdout().lock();
    let (mut rows, mut request, mut pages) = (Vec::new(), request, 0usize);
    let (as_of, truncated) = loop {
        let answer = client.query(args.connect.request(request.clone())).await.map_err(api_error)?.into_inner();
        pages += 1;
        if args.format == OutputFormat::Table {
            // Aligned columns need every row: pages are gathered, then sorted by key.
            rows.extend(answer.rows);
        } else {
            print_rows(&mut out, args.format, &answer.columns, &answer.rows, pages == 1)?;
        }
        if answer.next_page_token.is_empty() {
            if args.format == OutputFormat::Table {
                tidemark_proto::merge::sort_by_key(&mut rows, view.key_columns.len());
                print_rows(&mut out, args.format, &answer.columns, &rows, true)?;
            }
            break (answer.as_of, answer.truncated);
        }
        request.page_token = answer.next_page_token;
    };
    if args.format == OutputFormat::Table {
        let more = if truncated { " (cut at --limit)" } else { "" };
        eprintln!("{} rows of {} at {} ({}){more}", rows.len(), args.view, as_of, format_timestamp(as_of as i64));
    }
    Ok(())
}

/// `tidemark subscribe`.
pub async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let mut client = args.connect.client().await?;
    let view = view_info(&mut client, &args.connect, &args.view).await?;
    let request = SubscribeRequest {
        view: args.view.clone(),
        filters: args.filters.iter().map(|f| parse_filter(&view, f)).collect::<anyhow::Result<_>>()?,
        as_of: args.as_of,
        without_snapshot: args.no_snapshot,
    };
    let mut stream = client.subscribe(request).await.map_err(api_error)?.into_inner();
    let columns = view.columns;
    let mut out = std::io::stdout().lock();
    let mut csv = (args.format == OutputFormat::Csv).then(|| csv::Writer::from_writer(std::io::stdout()));
    if let Some(w) = &mut csv {
        let header = ["time", "diff"].into_iter().map(str::to_owned).chain(columns.iter().map(|c| c.name.clone()));
        w.write_record(header)?;
        w.flush()?;
    }
    let mut seen = 0;
    while let Some(message) = stream.message().await.map_err(api_error)? {
        let Some(batch) = message.batch else { continue };
        for u in &batch.updates {
            let row = u.row.clone().unwrap_or_default();
            match args.format {
                OutputFormat::Table => {
                    let cells: Vec<String> = columns.iter().zip(&row.values).map(|(c, v)| format!("{}={}", c.name, text(v))).collect();
                    writeln!(out, "{} {:+} {}", u.time, u.diff, cells.join(" "))?;
                }
                OutputFormat::Json => {
                    let object = serde_json::json!({"time": u.time, "diff": u.diff, "row": json_row(&columns, &row)});
                    writeln!(out, "{object}")?;
                }
                OutputFormat::Csv => {
                    let w = csv.as_mut().expect("made for csv");
                    w.write_record([u.time.to_string(), u.diff.to_string()].into_iter().chain(row.values.iter().map(text)))?;
                }
            }
        }
        if let Some(w) = &mut csv {
            w.flush()?;
        }
        if batch.more {
            // The rest of this batch follows; progress comes with its last message.
            continue;
        }
        if args.progress {
            match args.format {
                OutputFormat::Json => writeln!(out, "{}", serde_json::json!({"progress": batch.upper}))?,
                _ => eprintln!("complete through {} ({})", batch.upper - 1, format_timestamp(batch.upper as i64 - 1)),
            }
        }
        out.flush()?;
        seen += 1;
        if args.batches > 0 && seen >= args.batches {
            break;
        }
    }
    Ok(())
}

/// `tidemark views`.
pub async fn views(args: InfoArgs) -> anyhow::Result<()> {
    let views = args.connect.client().await?.list_views(args.connect.request(ListViewsRequest {})).await.map_err(api_error)?.into_inner().views;
    if args.json {
        for v in &views {
            let columns: Vec<serde_json::Value> =
                v.columns.iter().map(|c| serde_json::json!({"name": c.name, "type": type_name(c.r#type), "nullable": c.nullable})).collect();
            let line = serde_json::json!({"name": v.name, "key": v.key_columns, "columns": columns, "frontier": v.frontier, "since": v.since, "description": v.description});
            println!("{line}");
        }
        return Ok(());
    }
    for v in &views {
        println!("{} (key: {}; complete through {})", v.name, v.key_columns.join(", "), format_timestamp(v.frontier as i64 - 1));
        println!("  {}", v.description);
        let columns: Vec<String> = v.columns.iter().map(|c| format!("{} {}", c.name, type_name(c.r#type))).collect();
        println!("  columns: {}", columns.join(", "));
    }
    Ok(())
}

/// `tidemark status`.
pub async fn status(args: InfoArgs) -> anyhow::Result<()> {
    let s = args.connect.client().await?.status(args.connect.request(StatusRequest {})).await.map_err(api_error)?.into_inner();
    if args.json {
        let line = serde_json::json!({
            "frontier": s.frontier,
            "lag_ms": s.lag_ms,
            "ingested": s.ingested,
            "workers": s.workers.iter().map(|w| serde_json::json!({"process": w.process, "address": w.address, "threads": w.threads, "frontier": w.frontier, "connected": w.connected})).collect::<Vec<_>>(),
            "views": s.views.iter().map(|v| serde_json::json!({"name": v.name, "rows": v.rows, "arranged_updates": v.arranged_updates})).collect::<Vec<_>>(),
            "rejects": s.rejects.iter().map(|r| (r.reason.clone(), serde_json::Value::from(r.count))).collect::<serde_json::Map<_, _>>(),
        });
        println!("{line}");
        return Ok(());
    }
    println!("complete through {} (lag {} ms); {} records ingested", format_timestamp(s.frontier as i64 - 1), s.lag_ms, s.ingested);
    let mut out = std::io::stdout().lock();
    let header = ["process", "address", "threads", "frontier", "connected"].map(str::to_owned);
    let rows: Vec<Vec<String>> =
        s.workers.iter().map(|w| vec![w.process.to_string(), w.address.clone(), w.threads.to_string(), w.frontier.to_string(), w.connected.to_string()]).collect();
    print_table(&mut out, &header, &rows)?;
    writeln!(out)?;
    let header = ["view", "rows", "arranged updates"].map(str::to_owned);
    let rows: Vec<Vec<String>> = s.views.iter().map(|v| vec![v.name.clone(), v.rows.to_string(), v.arranged_updates.to_string()]).collect();
    print_table(&mut out, &header, &rows)?;
    if !s.rejects.is_empty() {
        writeln!(out)?;
        let header = ["reject reason", "count"].map(str::to_owned);
        let rows: Vec<Vec<String>> = s.rejects.iter().map(|r| vec![r.reason.clone(), r.count.to_string()]).collect();
        print_table(&mut out, &header, &rows)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ViewInfo {
        let column = |name: &str, t: ColumnType| Column { name: name.into(), r#type: t as i32, nullable: false, description: String::new() };
        ViewInfo {
            name: "kpis".into(),
            columns: vec![column("window", ColumnType::String), column("window_start", ColumnType::TimestampMs), column("orders", ColumnType::Int64), column("aov", ColumnType::Double)],
            key_columns: vec!["window".into(), "window_start".into()],
            ..Default::default()
        }
    }

    #[test]
    fn filters_read_by_column_type() {
        let v = view();
        let f = parse_filter(&v, "orders>=10").expect("valid");
        assert_eq!((f.column.as_str(), f.op, f.value), ("orders", Op::Ge as i32, Some(value::int64(10))));
        let f = parse_filter(&v, "window != day").expect("valid");
        assert_eq!((f.op, f.value), (Op::Ne as i32, Some(value::string("day"))));
        let f = parse_filter(&v, "window_start<2026-11-01T10:00:00Z").expect("valid");
        assert_eq!(f.value, Some(value::timestamp_ms(parse_timestamp("2026-11-01T10:00:00Z").expect("a timestamp"))));
        assert!(parse_filter(&v, "orders>=ten").is_err());
        assert!(parse_filter(&v, "nope=1").is_err());
        assert!(parse_filter(&v, "orders").is_err());
    }

    #[test]
    fn keys_follow_key_order() {
        let v = view();
        let key = parse_key(&v, &["hour".into(), "1700000000000".into()]).expect("valid");
        assert_eq!(key, vec![value::string("hour"), value::timestamp_ms(1_700_000_000_000)]);
        assert!(parse_key(&v, &["a".into(), "1".into(), "extra".into()]).is_err());
    }

    #[test]
    fn rows_print_in_every_format() {
        let v = view();
        let rows = vec![CountedRow {
            row: Some(Row { values: vec![value::string("hour"), value::timestamp_ms(0), value::int64(3), value::double(12.5)] }),
            count: 1,
        }];
        let render = |format| {
            let mut out = Vec::new();
            print_rows(&mut out, format, &v.columns, &rows, true).expect("writes to memory");
            String::from_utf8(out).expect("utf-8")
        };
        assert_eq!(render(OutputFormat::Csv), "window,window_start,orders,aov\nhour,1970-01-01T00:00:00.000Z,3,12.5\n");
        assert_eq!(render(OutputFormat::Json), "{\"aov\":12.5,\"orders\":3,\"window\":\"hour\",\"window_start\":\"1970-01-01T00:00:00.000Z\"}\n");
        let table = render(OutputFormat::Table);
        assert!(table.starts_with("window  window_start              orders  aov\n"), "{table}");
        assert!(table.ends_with("hour    1970-01-01T00:00:00.000Z  3       12.5\n"), "{table}");
    }
}
