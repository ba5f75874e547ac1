package status

import (
	"testing"
	"time"
)

func TestSetKeepsTransitionTimeUnlessStatusFlips(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	t1, t2 := t0.Add(time.Minute), t0.Add(2*time.Minute)
	var conds []Condition
	conds = Set(conds, Condition{Type: KeysReady, Status: True, Reason: "Created"}, t0)
	conds = Set(conds, Condition{Type: KeysReady, Status: True, Reason: "Present"}, t1)
	c := Find(conds, KeysReady)
	if !c.LastTransitionTime.Equal(t0) || c.Reason != "Present" {
		t.Fatalf("same status: got %+v, want transition time %v and reason Present", c, t0)
	}
	conds = Set(conds, Condition{Type: KeysReady, Status: False, Reason: "Damaged"}, t2)
	if c := Find(conds, KeysReady); !c.LastTransitionTime.Equal(t2) {
		t.Fatalf("flip: transition time %v, want %v", c.LastTransitionTime, t2)
	}
}

func TestSetOrdersReadyFirst(t *testing.T) {
	now := time.Now()
	var conds []Condition
	for _, typ := range []string{KnownHostsReady, Ready, DesiredStateValid} {
		conds = Set(conds, Condition{Type: typ, Status: True}, now)
	}
	want := []string{Ready, DesiredStateValid, KnownHostsReady}
	for i, w := range want {
		if conds[i].Type != w {
			t.Fatalf("order %d = %s, want %s", i, conds[i].Type, w)
		}
	}
}

func TestCloneKeepsEmptyLists(t *testing.T) {
	c := Status{Peers: []Peer{}, Conditions: []Condition{}}.Clone()
	if c.Peers == nil || c.Conditions == nil || c.Files != nil {
		t.Fatalf("Clone: peers %#v conditions %#v files %#v; want [] [] nil as given", c.Peers, c.Conditions, c.Files)
	}
}
