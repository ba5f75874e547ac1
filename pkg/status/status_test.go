package status

import (
	"testing"
	"time"
)

func TestCarryKeepsTransitionTimeUnlessStatusFlips(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	t1, t2 := t0.Add(time.Minute), t0.Add(2*time.Minute)
	first := Carry(nil, Condition{Type: KeysReady, Status: True, Reason: "Created"}, t0)
	if !first.LastTransitionTime.Equal(t0) {
		t.Fatalf("new condition: %+v, want transition time %v", first, t0)
	}
	prev := []Condition{first}
	c := Carry(prev, Condition{Type: KeysReady, Status: True, Reason: "Present"}, t1)
	if !c.LastTransitionTime.Equal(t0) || c.Reason != "Present" {
		t.Fatalf("same status: got %+v, want transition time %v and reason Present", c, t0)
	}
	if c := Carry(prev, Condition{Type: KeysReady, Status: False, Reason: "Damaged"}, t2); !c.LastTransitionTime.Equal(t2) {
		t.Fatalf("flip: transition time %v, want %v", c.LastTransitionTime, t2)
	}
}

func TestCloneKeepsEmptyLists(t *testing.T) {
	c := Status{Peers: []Peer{}, Conditions: []Condition{}}.Clone()
	if c.Peers == nil || c.Conditions == nil || c.Files != nil {
		t.Fatalf("Clone: peers %#v conditions %#v files %#v; want [] [] nil as given", c.Peers, c.Conditions, c.Files)
	}
}
