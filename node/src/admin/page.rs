//! The admin page people read: roles, the cache (tiers, most asked URLs), and per DHT level
//! the cluster, the store and the routing table. Plain HTML tables, no scripts.

use std::fmt::Write;

use crate::dht::snapshot::DhtSnapshot;
use crate::dns::probe::MemberView;
use crate::proxy::service::CacheView;

/// Renders the page.
pub fn render(
    dht: Option<DhtSnapshot>,
    cache: Option<CacheView>,
    dns_members: Option<Vec<MemberView>>,
    roles: &[(String, Result<(), String>)],
    level_names: &[String],
) -> String {
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Coral node</title>\
         <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}\
         td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-family:monospace}</style>\
         </head><body><h1>Coral node</h1>\n<h2>Roles</h2><table><tr><th>role</th><th>state</th></tr>\n",
    );
    for (name, state) in roles {
        let state = match state {
            Ok(()) => "ready".to_owned(),
            Err(reason) => escape(reason),
        };
        let _ = writeln!(html, "<tr><td>{}</td><td>{state}</td></tr>", escape(name));
    }
    html.push_str("</table>\n");
    if let Some(cache) = cache {
        render_cache(&mut html, &cache);
    }
    if let Some(members) = dns_members {
        render_dns(&mut html, &members);
    }
    let Some(dht) = dht else {
        html.push_str("<p>This node does not play the DHT role.</p></body></html>\n");
        return html;
    };
    let _ = writeln!(
        html,
        "<h2>DHT</h2><p>ID <code>{}</code> at <code>{}</code>; {} announcement(s) kept fresh. \
         <a href=\"/dht\">JSON</a> · <a href=\"/metrics\">metrics</a></p>",
        dht.id, dht.addr, dht.announcements
    );
    for level in &dht.levels {
        let name = match level.level {
            0 => "level 0: everyone".to_owned(),
            n => match level_names.get(n - 1) {
                Some(label) => format!("level {n}: same {}", escape(label)),
                None => format!("level {n}"),
            },
        };
        let cluster = level.cluster.map_or_else(
            || "everyone".to_owned(),
            |c| format!("cluster {:016x}", c.0),
        );
        let live = level.peers.iter().filter(|p| !p.peer.replacement).count();
        let _ = writeln!(
            html,
            "<h3>{name} ({cluster})</h3><p>{live} live peer(s), {} replacement(s); store: {} key(s), \
             {} value(s), {} loaded key(s)</p>",
            level.peers.len() - live,
            level.store.keys,
            level.store.values,
            level.store.loaded_keys
        );
        html.push_str(
            "<table><tr><th>bucket</th><th>node ID</th><th>address</th><th>heard</th>\
             <th>how</th><th>RTT</th><th>entry</th></tr>\n",
        );
        for peer in &level.peers {
            let rtt = peer
                .rtt_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"));
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} s ago</td><td>{}</td><td>{rtt}</td><td>{}</td></tr>",
                peer.peer.bucket,
                peer.peer.id,
                peer.peer.addr,
                peer.peer.age_secs,
                if peer.peer.direct {
                    "direct"
                } else {
                    "second-hand"
                },
                if peer.peer.replacement {
                    "replacement"
                } else {
                    "live"
                },
            );
        }
        html.push_str("</table>\n");
    }
    html.push_str("</body></html>\n");
    html
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn render_dns(html: &mut String, members: &[MemberView]) {
    html.push_str(
        "<h2>DNS: members</h2><p>Who this node may publish, and whether its checks publish them now. \
         <a href=\"/dns\">JSON</a></p>\n<table><tr><th>role</th><th>address</th><th>node</th>\
         <th>locality</th><th>health</th><th>load</th></tr>\n",
    );
    for member in members {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td></tr>",
            member.role,
            match member.public_address {
                Some(public) => format!("{} (published as {public})", member.address),
                None => member.address.to_string(),
            },
            escape(&member.node),
            escape(&member.locality.join(" / ")),
            if member.healthy {
                "published"
            } else {
                "ejected"
            },
            member.load
        );
    }
    html.push_str("</table>\n");
}

fn render_cache(html: &mut String, cache: &CacheView) {
    let disk = match (cache.disk_objects, cache.disk_bytes) {
        (Some(objects), Some(bytes)) => format!("{objects} URL(s), {bytes} bytes"),
        _ => "none".to_owned(),
    };
    let _ = writeln!(
        html,
        "<h2>Cache</h2><p>Memory: {} URL(s), {} bytes. Disk: {disk}. \
         <a href=\"/cache\">JSON</a></p>\n<table><tr><th>most asked URLs</th><th>requests (sampled)</th></tr>",
        cache.memory_objects, cache.memory_bytes
    );
    for popular in &cache.top_urls {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(&popular.url),
            popular.requests
        );
    }
    html.push_str("</table>\n");
}
