use etcd_sd::*;
use std::time::{Duration, Instant};
fn main() {
    let ep = std::env::var("ETCD_ENDPOINTS").unwrap_or("127.0.0.1:2379".into());
    let t = Instant::now();
    let c = Client::connect(&[ep.as_str()], ClientOptions::default()).unwrap();
    println!("connected in {:?}", t.elapsed());
    let inst = Instancer::new(&c, "/svc/").unwrap();
    let rx = inst.subscribe();
    println!("first: {:?}", rx.recv().unwrap());
    let r = Registrar::new(
        &c,
        Service::new("/svc/a", "http://a").with_ttl(TtlOption::new(
            Duration::from_millis(500),
            Duration::from_secs(2),
        )),
    );
    let ev = r.events();
    let t = Instant::now();
    r.register().unwrap();
    println!("registered in {:?} lease {:?}", t.elapsed(), r.lease_id());
    println!("ev: {:?}", rx.recv_timeout(Duration::from_secs(2)));
    let r2 = Registrar::new(&c, Service::new("/svc/b", "http://b"));
    r2.register().unwrap();
    println!("ev: {:?}", rx.recv_timeout(Duration::from_secs(2)));
    println!("entries {:?}", c.get_entries("/svc/"));
    drop(r2);
    println!("ev: {:?}", rx.recv_timeout(Duration::from_secs(2)));
    std::thread::sleep(Duration::from_secs(3));
    println!("state {:?}", r.state());
    while let Ok(e) = ev.try_recv() {
        println!("reg ev {:?}", e);
    }
    let t = Instant::now();
    drop(r);
    println!("dropped in {:?}", t.elapsed());
    println!("ev: {:?}", rx.recv_timeout(Duration::from_secs(2)));
    inst.stop();
    println!(
        "after stop: {:?} / {:?}",
        rx.recv_timeout(Duration::from_secs(2)),
        inst.current().err
    );
    let t = Instant::now();
    drop(inst);
    drop(c);
    println!("client dropped in {:?}", t.elapsed());
}
