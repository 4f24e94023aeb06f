from django import forms

from .selectors import NotCallable, callee_for


class StartCallForm(forms.Form):
    callee = forms.CharField(max_length=150, label="Username to call")

    def __init__(self, *args, caller, **kwargs):
        super().__init__(*args, **kwargs)
        self.caller = caller

    def clean_callee(self):
        try:
            return callee_for(caller=self.caller, username=self.cleaned_data["callee"])
        except NotCallable as exc:
            raise forms.ValidationError(str(exc)) from exc
