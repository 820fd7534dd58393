//! The kernel memory a balancer locks with 1,000 VIPs x 16 backends, tables
//! sized by lbctl, stays under 100 MiB in all its maps (issue 19, item 2:
//! larger tables for less disruption must still fit). Measured as `lbctl
//! status` and lbctl-applybench measure it: the `memlock` of every map and
//! every VIP table of the real program, after `lbctl apply` of the file.
use lbctl::service::apply;
use lbctl::table_size;
use lbctl_lab::fixtures::*;

const MIB: u64 = 1024 * 1024;

#[test]
fn a_thousand_vips_of_sixteen_backends_lock_under_100_mib() {
    in_fresh_netns(|| {
        let lb = Balancer::load();
        let d = lbctl_lab::configs::many_vips(1000, 16, None);
        let applied = apply::apply(&lb.maps, &[], &d).unwrap();
        assert_eq!(applied.vips_added, 1000);
        let run = lb.maps.running().unwrap();
        for v in &run.vips {
            assert_eq!(v.table_size, table_size::auto_size(16));
            assert_eq!(lb.maps.table(v.index).unwrap().len(), 32749);
        }
        let m = lb.maps.locked_memory().unwrap();
        eprintln!(
            "locked: {:.1} MiB in {} maps, {:.1} MiB in {} tables of {} slots",
            m.total as f64 / MIB as f64,
            m.maps,
            m.tables as f64 / MIB as f64,
            m.table_count,
            table_size::auto_size(16)
        );
        assert_eq!(m.table_count, 1000);
        assert!(m.total < 100 * MIB, "{} bytes locked", m.total);
    });
}
