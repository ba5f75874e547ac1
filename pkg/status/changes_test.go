package status

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestChanges(t *testing.T) {
	prev := Status{Generation: 1,
		Conditions: []Condition{{Type: Ready, Status: False, Reason: "WaitingForPeer"}, {Type: "ServeReady", Status: True, Reason: "Serving"}, {Type: "Old", Status: True}},
		Peers:      []Peer{{Name: "stage", State: PeerProbing, Trust: TrustNone}, {Name: "gone", State: PeerServing}}}
	next := Status{Generation: 2,
		Conditions: []Condition{{Type: Ready, Status: True, Reason: "AllReady"}, {Type: "ServeReady", Status: True, Reason: "Serving"}, {Type: "New", Status: False, Reason: "Why"}},
		Peers:      []Peer{{Name: "stage", State: PeerServing, Trust: TrustTOFU, HostKeyFingerprint: "SHA256:x"}, {Name: "prod", Role: "consumer", State: PeerKeysKnown, Trust: TrustPinned}}}
	want := []string{
		"generation 1 -> 2",
		"Ready False (WaitingForPeer) -> True (AllReady)",
		"New False (Why)",
		"Old gone",
		"peer stage: Probing -> Serving, trust none -> tofu SHA256:x",
		"peer prod (consumer): KeysKnown, trust pinned",
		"peer gone gone",
	}
	if diff := cmp.Diff(want, Changes(prev, next)); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	if got := Changes(next, next); len(got) != 0 {
		t.Fatalf("no change: %v", got)
	}
}
