"""Common parts of every step screen: the steps line on top, the key footer at the bottom."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from textual.binding import Binding, BindingType
from textual.screen import Screen

if TYPE_CHECKING:
    from rescueui.core.session import Session
    from rescueui.tui.app import RescueApp
    from rescueui.tui.state import Flow
    from rescueui.tui.widgets.glyphs import Glyphs


class StepScreen(Screen[Any]):
    STEP = ""
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "back", "Back", id="back")]

    @property
    def rescue(self) -> RescueApp:
        return self.app  # type: ignore[return-value]

    @property
    def session(self) -> Session:
        return self.rescue.session

    @property
    def flow(self) -> Flow:
        return self.rescue.flow

    @property
    def glyphs(self) -> Glyphs:
        return self.rescue.glyphs

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "back":
            return len(self.app.screen_stack) > 1
        return True

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()
