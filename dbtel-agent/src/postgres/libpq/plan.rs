//! libpq's probe plan: which program goes on which instruction of which
//! function, with what cookie (see dbtel_common::cookie).

use dbtel_common::{cookie, func};

use super::discover::{args_of, returns_probed, LibpqTarget, PIPELINE_CALLS, QUERY_CALLS};
use crate::engine::{Layout, Plan, Point};

/// The cookie's low 32 bits (the layout slot goes above them at attach).
fn low(c: u64) -> u32 {
    c as u32
}

pub fn plan(t: &LibpqTarget) -> Plan {
    let entry = |f: &str| t.offsets[f] + t.placements[f].offset;
    let mut points: Vec<Point> = QUERY_CALLS
        .iter()
        .map(|&(name, f)| {
            let (text, stmt) = args_of(f);
            Point {
                program: "pq_query",
                function: name,
                offset: entry(name),
                cookie: low(cookie::make(f, text, stmt, 0)),
            }
        })
        .collect();
    match &t.result_points {
        Ok(rp) => {
            for p in rp {
                let c = cookie::make_result_point(
                    p.res.pt_regs_offset().into(),
                    p.conn.pt_regs_offset().into(),
                    0,
                );
                points.push(Point {
                    program: "pq_result",
                    function: "PQgetResult",
                    offset: t.offsets["PQgetResult"] + p.offset,
                    cookie: low(c),
                });
            }
        }
        Err(_) => {
            // Entry and return probe share the function's first instruction.
            let first = t.offsets["PQgetResult"];
            points.push(Point {
                program: "pq_getresult",
                function: "PQgetResult",
                offset: first,
                cookie: 0,
            });
            let c = low(cookie::make(func::PQGET_RESULT, 0, 0, 0));
            points.push(Point {
                program: "pq_getresult_ret",
                function: "PQgetResult",
                offset: first,
                cookie: c,
            });
        }
    }
    // Pipeline mode, where this libpq has it.
    for &(name, f) in PIPELINE_CALLS
        .iter()
        .filter(|(n, _)| t.offsets.contains_key(n))
    {
        let c = low(cookie::make(f, 0, 0, 0));
        points.push(Point {
            program: "pq_pipeline",
            function: name,
            offset: entry(name),
            cookie: c,
        });
        if returns_probed(f) {
            points.push(Point {
                program: "pq_pipeline_ret",
                function: name,
                offset: entry(name),
                cookie: c,
            });
        }
    }
    points.push(Point {
        program: "pq_finish",
        function: "PQfinish",
        offset: entry("PQfinish"),
        cookie: 0,
    });
    Plan {
        engine: dbtel_common::Engine::Postgres,
        pid: t.pid,
        path: t.path.clone(),
        host_path: t.host_path.clone(),
        layout: Layout::Libpq(t.layout),
        points,
        warnings: t.conn_layout_error.iter().map(|e| format!("{}: connection details unavailable ({e}); spans will lack db.namespace and server.*", t.path)).collect(),
    }
}
