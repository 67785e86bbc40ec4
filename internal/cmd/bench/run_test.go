package main

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseMix(t *testing.T) {
	m, err := ParseMix("good=70, decline=10,refused=10,oos=5,high=5")
	if err != nil {
		t.Fatal(err)
	}
	if got := m.String(); got != "good=70,decline=10,refused=10,oos=5,high=5" {
		t.Errorf("String() = %q", got)
	}
	for _, bad := range []string{"", "good", "good=x", "good=-1", "bogus=1", "good=0,decline=0"} {
		if _, err := ParseMix(bad); err == nil {
			t.Errorf("ParseMix(%q) accepted", bad)
		}
	}
}

// The mix is exact over every window of its total, and kinds interleave.
func TestMixPickIsExactAndSpread(t *testing.T) {
	m, _ := ParseMix("good=70,decline=10,refused=10,oos=5,high=5")
	got := map[Kind]int{}
	for i := range 1000 {
		got[m.Pick(i)]++
	}
	want := map[Kind]int{Good: 700, Decline: 100, Refused: 100, OOS: 50, High: 50}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("kinds over 1000 orders (-want +got):\n%s", diff)
	}
	first := map[Kind]bool{}
	for i := range 20 {
		first[m.Pick(i)] = true
	}
	if len(first) < 3 {
		t.Errorf("the first 20 orders hold %d kinds: the mix is not spread", len(first))
	}
}

func TestPercentiles(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	got := percentiles(d)
	want := Percentiles{P50: 50, P90: 90, P99: 99, Max: 100}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("percentiles (-want +got):\n%s", diff)
	}
	if got := percentiles(nil); got != (Percentiles{}) {
		t.Errorf("percentiles(nil) = %+v", got)
	}
}
