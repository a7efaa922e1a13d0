package server

import "testing"

// TestAddrKey: Registers from one IPv6 /64 share a bucket, so a host given a
// /64 cannot spread a flood over 2^64 addresses; IPv4 addresses (mapped into
// IPv6 or not) each have their own.
func TestAddrKey(t *testing.T) {
	t.Parallel()
	for _, c := range [][2]string{
		{"[2001:db8:1:2::1]:4000", "[2001:db8:1:2:ffff:ffff:ffff:ffff]:5000"},
		{"[fe80::1%eth0]:4000", "[fe80::2]:4000"},
		{"10.0.0.1:4000", "10.0.0.1:5000"},
		{"[::ffff:10.0.0.1]:4000", "10.0.0.1:4000"},
	} {
		if a, b := addrKey(c[0]), addrKey(c[1]); a != b {
			t.Errorf("%s and %s have buckets %q and %q, want one", c[0], c[1], a, b)
		}
	}
	for _, c := range [][2]string{
		{"[2001:db8:1:2::1]:4000", "[2001:db8:1:3::1]:4000"},
		{"10.0.0.1:4000", "10.0.0.2:4000"},
	} {
		if a, b := addrKey(c[0]), addrKey(c[1]); a == b {
			t.Errorf("%s and %s share the bucket %q", c[0], c[1], a)
		}
	}
}
